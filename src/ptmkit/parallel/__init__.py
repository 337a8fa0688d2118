"""Scaling on torch.distributed: layouts (config), process mesh, and the ordered parallelize() (apply)."""
