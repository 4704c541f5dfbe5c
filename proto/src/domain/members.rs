//! A region's members as the hub's watch sends them: the whole list, or what changed since the
//! previous message ([`delta`] on the hub, [`apply`] on the spoke). Lists are sorted by node
//! and name each node once; what [`apply`] gives is again sorted, so that the spoke's list
//! after a delta is the one the hub would have sent whole.

use std::collections::BTreeMap;

use crate::hub::v1 as pb;

/// What changed from `before` to `after`: the members that joined or whose address changed,
/// and the nodes that left. Both lists are sorted by node.
pub fn delta(before: &[pb::Member], after: &[pb::Member]) -> (Vec<pb::Member>, Vec<String>) {
    let old: BTreeMap<&str, &str> = before.iter().map(|m| (m.node.as_str(), m.peer_address.as_str())).collect();
    let new: BTreeMap<&str, &str> = after.iter().map(|m| (m.node.as_str(), m.peer_address.as_str())).collect();
    let joined = new
        .iter()
        .filter(|(node, address)| old.get(*node) != Some(*address))
        .map(|(node, address)| pb::Member { node: node.to_string(), peer_address: address.to_string() })
        .collect();
    let left = old.keys().filter(|node| !new.contains_key(*node)).map(|node| node.to_string()).collect();
    (joined, left)
}

/// `members` with `left` taken out and `joined` put in (replacing a member of the same node),
/// sorted by node.
pub fn apply(members: Vec<pb::Member>, joined: Vec<pb::Member>, left: &[String]) -> Vec<pb::Member> {
    let mut by_node: BTreeMap<String, pb::Member> = members.into_iter().map(|m| (m.node.clone(), m)).collect();
    for node in left {
        by_node.remove(node);
    }
    for member in joined {
        by_node.insert(member.node.clone(), member);
    }
    by_node.into_values().collect()
}

#[cfg(test)]
mod tests {
    use aqueduct_testkit::fuzz;
    use proptest::prelude::*;

    use super::*;

    fn member(node: &str, address: &str) -> pb::Member {
        pb::Member { node: node.into(), peer_address: address.into() }
    }

    #[test]
    fn a_join_a_leave_and_a_moved_address() {
        let before = vec![member("a", "1"), member("b", "2"), member("c", "3")];
        let after = vec![member("a", "1"), member("c", "9"), member("d", "4")];
        let (joined, left) = delta(&before, &after);
        assert_eq!(joined, [member("c", "9"), member("d", "4")]);
        assert_eq!(left, ["b"]);
        assert_eq!(apply(before, joined, &left), after);
        assert_eq!(delta(&after, &after), (vec![], vec![]), "no change, nothing sent");
    }

    fn members() -> impl Strategy<Value = Vec<pb::Member>> {
        proptest::collection::btree_map("[a-e]{1,2}", "[0-9]{0,2}", 0..12)
            .prop_map(|m| m.into_iter().map(|(node, address)| pb::Member { node, peer_address: address }).collect())
    }

    proptest! {
        #![proptest_config(fuzz::config(2000))]

        /// Whatever the two lists, the delta brings the one to the other, and is no longer than
        /// what changed.
        #[test]
        fn fuzz_a_delta_applied_gives_the_new_list(before in members(), after in members()) {
            let (joined, left) = delta(&before, &after);
            prop_assert!(joined.len() + left.len() <= before.len() + after.len());
            prop_assert_eq!(apply(before, joined, &left), after);
        }

        /// A hostile delta (unsorted, repeated, leaving what is not there) still gives a
        /// sorted list naming each node once.
        #[test]
        fn fuzz_any_delta_gives_a_sorted_list(
            before in members(),
            joined in proptest::collection::vec(("[a-e]{1,2}", "[0-9]{0,2}"), 0..8),
            left in proptest::collection::vec("[a-f]{1,2}", 0..8),
        ) {
            let joined = joined.into_iter().map(|(node, address)| pb::Member { node, peer_address: address }).collect();
            let got = apply(before, joined, &left);
            prop_assert!(got.windows(2).all(|w| w[0].node < w[1].node));
        }
    }
}
