"""Fleets: many variants of one template built, checked, verified, published, deployed, routed, retired."""
