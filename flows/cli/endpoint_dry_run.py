"""``--dry-run`` of ``mme endpoint start``, ``mme endpoint stop`` and ``mme watch``: what each
would do, read from the endpoint's own record and settings (or the watch state and one listing
of the source), with nothing started, signalled, written or emitted.

Why not :func:`infra.endpoint.process.find_running`: it removes a stale state file, and it asks
the endpoint for ``/ping``; a dry run only reads, so it proves the process the record names by
its identity (pid, start time, boot id), as ``stop`` does before it signals.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flows.cli.dry_run import show_plan

if TYPE_CHECKING:
    from flows.cli.endpoint import EndpointStartOptions


def running_record(name: str) -> dict[str, Any]:
    """The endpoint's record as ``stop`` would judge it: ``running`` (its process proven
    alive), ``stale`` (a record whose process is gone: ``stop`` removes it) or ``absent``."""
    from infra.endpoint.process import owned_process, read_state, state_file

    info = read_state(name)
    doc: dict[str, Any] = {"endpoint": name, "state_file": str(state_file(name))}
    if info is None:
        return {**doc, "state": "absent"}
    ident = owned_process(info)
    return {**doc, "state": "running" if ident else "stale", "pid": info.pid, "url": info.url,
            "model_data_url": info.model_data_url, "cache_dir": info.cache_dir,
            "process": ident.describe() if ident else None}


def _refusal(o: EndpointStartOptions, record: dict[str, Any], url: str) -> Exception | None:
    """What ``start`` would refuse with, in its words: a running endpoint with another model
    prefix, or a ``--port`` that cannot be bound now (bound and closed at once, as it checks)."""
    from infra.endpoint.process import EndpointStartError
    from infra.triton.process import check_port_free

    if record["state"] == "running" and record["model_data_url"] != url:
        return EndpointStartError(
            f"endpoint {o.name!r} is already running with model prefix {record['model_data_url']}, "
            f"not {url}; retire it first (mme retire --endpoint {o.name} --stop)")
    try:
        if record["state"] != "running" and o.port:
            check_port_free("127.0.0.1", o.port)
    except Exception as e:
        return e
    return None


def start_dry_run(o: EndpointStartOptions) -> None:
    """``mme endpoint start --dry-run``: the settings it would start with, or the running one;
    what the start would refuse exits as the start does."""
    from flows.cli.common import exit_for
    from infra.endpoint.process import endpoint_settings, log_file

    record = running_record(o.name)
    url = o.models_url()
    refused = _refusal(o, record, url)
    if refused is not None:
        exit_for(refused)
    if record["state"] == "running":
        line = (f"endpoint {o.name}: already running at {record['url']} (pid {record['pid']}, models "
                f"from {record['model_data_url']})")
        show_plan({**record, "action": "none"}, [line], f"endpoint {o.name}: would start nothing", o.as_json)
        return
    cfg = endpoint_settings(o.name, url, port=o.port, max_loaded_models=o.max_loaded_models,
                            spare_slots=o.spare_slots, triton=o.triton())
    limits = {"max_loaded_models": cfg.max_loaded_models, "spare_slots": cfg.spare_slots,
              "memory_limit_bytes": cfg.memory_limit_bytes, "disk_cache_bytes": cfg.disk_cache_bytes}
    ports = {"port": cfg.port, "triton_http_port": cfg.triton_http_port,
             "triton_grpc_port": cfg.triton_grpc_port, "triton_metrics_port": cfg.triton_metrics_port}
    doc = {**record, "action": "start", "host": cfg.host, **ports, "model_data_url": url,
           "cache_dir": str(cfg.cache_dir), "log_file": str(log_file(o.name)), "limits": limits}
    free = "a free one"
    where = f"{cfg.host}:{cfg.port}" if cfg.port else f"{cfg.host} (a free port)"
    lines = [f"would start endpoint {o.name} on {where} (models from {url})",
             f"  tritonserver ports: http {cfg.triton_http_port or free}, grpc "
             f"{cfg.triton_grpc_port or free}, metrics "
             f"{'off' if cfg.triton_metrics_port is None else cfg.triton_metrics_port or free}",
             f"  cache {cfg.cache_dir} (at most {cfg.disk_cache_bytes / 2**30:.0f} GiB), log {log_file(o.name)}",
             f"  limits: max loaded models {cfg.max_loaded_models or 'none'}, spare slots "
             f"{'derived' if cfg.spare_slots is None else cfg.spare_slots}, memory "
             + ("70% of physical memory" if cfg.memory_limit_bytes is None
                else f"{cfg.memory_limit_bytes} bytes")]
    if record["state"] == "stale":
        lines.append(f"  would remove the stale state file {record['state_file']} (pid {record['pid']} is gone)")
    show_plan(doc, lines, f"endpoint {o.name}: would start 1 endpoint process", o.as_json)


def stop_dry_run(name: str, as_json: bool) -> None:
    """``mme endpoint stop --dry-run``: the process it would stop (pid, the endpoint's record),
    the stale record it would remove, or nothing."""
    record = running_record(name)
    action = {"running": "stop", "stale": "remove stale state file", "absent": "none"}[record["state"]]
    if record["state"] == "running":
        line = (f"would stop endpoint {name}: pid {record['pid']} ({record['process']}) at "
                f"{record['url']}, and its tritonserver; then remove {record['state_file']}")
    elif record["state"] == "stale":
        line = (f"endpoint {name}: not running; would remove its stale state file "
                f"{record['state_file']} (pid {record['pid']} is gone)")
    else:
        line = f"endpoint {name}: not running (no state file {record['state_file']})"
    show_plan({**record, "action": action}, [line],
              f"endpoint {name}: would signal {1 if action == 'stop' else 0} process", as_json)


def watch_dry_run(source_uri: str, as_json: bool) -> None:
    """``mme watch --dry-run``: the ``mme.model.landed`` events one scan would emit (and the
    objects it would report removed), from the watch state and one listing; nothing emitted,
    the state not written. The same rules as the flow (:mod:`tasks.deploy.watch`)."""
    from infra.aws.lambda_handler import DEFAULT_SUFFIXES, EVENT_NAME, ensemble_for, landed_event
    from tasks.deploy.watch import scan_source

    found = scan_source(source_uri, None, DEFAULT_SUFFIXES, None)
    source_uri, state_uri, previous, listing = found.source_uri, found.state_uri, found.previous, found.listing
    changes, removed, _ = found.diff
    events = [{**landed_event(c.info.uri, c.info.key, c.info.size, ensemble_for(c.info.key, None) or "")
               ["payload"], "change": c.kind} for c in changes]
    gone = [{"uri": r.record.uri, "key": r.key, "change": "removed"} for r in removed]
    lines = [f"would emit {EVENT_NAME} {e['uri']} ({e['change']}, ensemble {e['ensemble']})" for e in events]
    lines += [f"would report {g['uri'] or g['key']} removed (no event)" for g in gone]
    show_plan({"source": source_uri, "state": state_uri, "event": EVENT_NAME, "events": events,
               "removed": gone, "model_files": len(listing)}, lines,
              f"scanned {source_uri}: {len(listing)} model files; would emit {len(events)} events, "
              f"report {len(gone)} removed" + (f", write the watch state {state_uri}"
                                               if changes or removed or not previous else ""), as_json)
