"""Rollout transforms: composition (`chain`, `named_chain`, `inject_hyperparams`) and the
reward/advantage transforms algorithms are built from."""
