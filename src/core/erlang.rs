//! Erlang-B: the share of requests a pool of `n` numbers turns away when `load` Erlangs are
//! offered to it (requests arriving at random, each holding a number for a while), and the
//! smallest pool that keeps that share under a target. Pure arithmetic; floats are fine here
//! (these are estimates, never money).

/// No pool is sized beyond this many numbers: loads that would need more are refused by the
/// callers that take them from outside (the `plan` command), and the search stops here.
pub const MAX_SERVERS: u64 = 10_000_000;

/// Erlang-B blocking probability of `servers` numbers at `load` Erlangs, by the stable
/// recursion B(0) = 1, B(n) = A·B(n−1) / (n + A·B(n−1)): no factorials, no powers, every
/// step between 0 and 1, so it neither overflows nor loses precision at thousands of numbers.
pub fn erlang_b(servers: u64, load: f64) -> f64 {
    if load.is_nan() || load <= 0.0 {
        return if servers == 0 { 1.0 } else { 0.0 };
    }
    let mut b = 1.0;
    for n in 1..=servers.min(MAX_SERVERS) {
        b = load * b / (n as f64 + load * b);
    }
    b
}

/// The smallest number of numbers whose blocking at `load` Erlangs is at most `target`
/// (0 < target < 1). No load needs no number. Stops at [`MAX_SERVERS`].
pub fn servers_for(load: f64, target: f64) -> u64 {
    if load.is_nan() || load <= 0.0 {
        return 0;
    }
    let mut b = 1.0;
    let mut n = 0;
    while b > target && n < MAX_SERVERS {
        n += 1;
        b = load * b / (n as f64 + load * b);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of the classic Erlang-B table (the traffic in Erlangs that `servers` carry at a
    /// grade of service), as printed in Siemens' "Telephone Traffic Theory: Tables and Charts"
    /// and reproduced in traffic-engineering references (Iversen's "Teletraffic Engineering
    /// and Network Planning", ITU-D / DTU, among them): (servers, blocking, Erlangs).
    const TABLE: [(u64, f64, f64); 10] = [
        (5, 0.01, 1.361),
        (10, 0.01, 4.461),
        (20, 0.01, 12.031),
        (30, 0.01, 20.337),
        (50, 0.01, 37.901),
        (100, 0.01, 84.064),
        (10, 0.02, 5.084),
        (20, 0.02, 13.182),
        (10, 0.001, 3.092),
        (10, 0.05, 6.216),
    ];

    #[test]
    fn blocking_matches_the_published_table() {
        for (n, target, load) in TABLE {
            let b = erlang_b(n, load);
            // The table's loads are rounded to 0.001 Erlang.
            assert!(
                (b - target).abs() / target < 0.002,
                "B({n}, {load}) = {b}, the table says {target}"
            );
        }
    }

    #[test]
    fn the_recommended_size_is_the_tables_row() {
        for (n, target, load) in TABLE {
            assert_eq!(servers_for(load * 0.999, target), n, "{load} E at {target}");
            assert_eq!(
                servers_for(load * 1.001, target),
                n + 1,
                "{load} E at {target}"
            );
        }
        // The example: 10 Erlangs need 18 numbers for 1% (17 block 1.3%).
        assert_eq!(servers_for(10.0, 0.01), 18);
        assert!(erlang_b(17, 10.0) > 0.01 && erlang_b(18, 10.0) < 0.01);
    }

    #[test]
    fn large_pools_stay_finite_and_monotonic() {
        // 120 a minute held 25 minutes: 3000 Erlangs, a few percent more numbers than that.
        let n = servers_for(3000.0, 0.01);
        assert!((3000..3100).contains(&n), "{n}");
        let (below, at) = (erlang_b(n - 1, 3000.0), erlang_b(n, 3000.0));
        assert!(below.is_finite() && below > 0.01 && at <= 0.01 && at > 0.0);
    }

    #[test]
    fn no_load_needs_no_number_and_no_number_blocks_everything() {
        assert_eq!(servers_for(0.0, 0.01), 0);
        assert_eq!(servers_for(f64::NAN, 0.01), 0);
        assert_eq!(erlang_b(0, 5.0), 1.0);
        assert_eq!(erlang_b(3, 0.0), 0.0);
        assert_eq!(erlang_b(0, 0.0), 1.0);
    }
}
