//! One account's concurrency budget shared by the replicas of a consumer
//! group without a coordinator: each takes the part its partitions give it.

/// This replica's share of an account's concurrency budget: the budget
/// times the part of the group's partitions it owns, rounded down, and at
/// least 1 while it owns any (0 when it owns none). The replicas of a group
/// own disjoint partitions, so their shares add up to at most the budget as
/// long as each owns at least `total / budget` partitions (the minimum of 1
/// can go over it otherwise). `total` unknown (not read from the brokers
/// yet): 1, the safe minimum.
pub fn replica_share(budget: usize, owned: usize, total: Option<usize>) -> usize {
    match total {
        _ if owned == 0 => 0,
        Some(total) if total > 0 => (budget * owned.min(total) / total).max(1),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_owned_partitions() {
        assert_eq!(replica_share(12, 4, Some(12)), 4);
        assert_eq!(replica_share(12, 12, Some(12)), 12);
        assert_eq!(replica_share(14, 4, Some(12)), 4, "rounded down");
        assert_eq!(
            replica_share(12, 1, Some(24)),
            1,
            "at least 1 while owning any"
        );
        assert_eq!(replica_share(12, 0, Some(12)), 0);
        assert_eq!(replica_share(12, 3, None), 1, "unknown total: the minimum");
        assert_eq!(
            replica_share(12, 13, Some(12)),
            12,
            "never above the budget"
        );
    }

    #[test]
    fn shares_never_add_up_above_the_budget() {
        // Any split among three replicas that each own at least
        // total / budget of the partitions stays within the budget.
        for total in 1..=40usize {
            for budget in 1..=20usize {
                for a in 0..=total {
                    for b in 0..=(total - a) {
                        let parts = [a, b, total - a - b];
                        if parts.iter().any(|&p| p > 0 && p * budget < total) {
                            continue;
                        }
                        let sum: usize = parts
                            .iter()
                            .map(|&p| replica_share(budget, p, Some(total)))
                            .sum();
                        assert!(
                            sum <= budget,
                            "{parts:?} of {total}, budget {budget}: {sum}"
                        );
                    }
                }
            }
        }
    }
}
