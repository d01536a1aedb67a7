"""Plain Python with no Celeriac import: the CPU-bound benchmark workload.

`app.py` exposes it as the `fib` task; bench/celery imports this very file
into a Celery task, so both systems run the same source (bench/compare).
"""


def fib(n: int) -> int:
    """The n-th Fibonacci number, computed naively on purpose (as math.fib)."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)
