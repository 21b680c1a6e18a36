"""The dreamcatcher benchmark: ``python -m bench [--dsn DSN] [--size tiny|small|full]``.

Every row compares our number with a raw PostgreSQL ceiling measured in the
same run on the same server (plain tables, plain INSERT/COPY, a hand-written
merge), so the *ratio* is what carries from one machine to another; absolute
numbers do not. Nothing here asserts a timing: rows report ``ok`` against
their target and the caller decides what to do with it.
"""
