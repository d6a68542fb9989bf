"""Bundled architectures (installed as stcnnt_dsl.architectures)."""
