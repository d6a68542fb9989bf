"""The Lark grammar of the stcnnt language (installed as stcnnt_dsl.grammar)."""
