//! `math`: small arithmetic tasks, the "hello world" of Celeriac.

use celeriac_sdk::{Error, Result, task};

/// Sum of two integers; overflow is an input error, not a wrap-around.
#[task]
pub fn add(a: i64, b: i64) -> Result<i64> {
    a.checked_add(b)
        .ok_or_else(|| Error::invalid_input(format!("{a} + {b} overflows a 64-bit integer")))
}

/// Product of two integers.
#[task]
pub fn mul(a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b)
        .ok_or_else(|| Error::invalid_input(format!("{a} * {b} overflows a 64-bit integer")))
}

/// Quotient of two numbers.
#[task]
pub fn div(a: f64, b: f64) -> Result<f64> {
    if b == 0.0 {
        return Err(Error::invalid_input("division by zero"));
    }
    Ok(a / b)
}

/// Sum of a list of numbers.
#[task]
pub fn sum(values: Vec<f64>) -> f64 {
    values.iter().sum()
}

/// The n-th Fibonacci number, computed naively on purpose: it is the
/// CPU-bound workload of the benchmarks. Past 93 the result overflows u64.
#[task]
pub fn fib(n: u32) -> Result<u64> {
    if n > 93 {
        return Err(Error::invalid_input(format!(
            "fib({n}) does not fit in 64 bits; n must be at most 93"
        )));
    }
    fn go(n: u32) -> u64 {
        if n < 2 {
            n as u64
        } else {
            go(n - 1) + go(n - 2)
        }
    }
    // Naive recursion is exponential; past ~45 use the linear form so a
    // large argument is slow only by choice.
    if n <= 40 {
        return Ok(go(n));
    }
    let (mut a, mut b) = (0u64, 1u64);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    Ok(a)
}

celeriac_sdk::export_tasks!(add, mul, div, sum, fib);
