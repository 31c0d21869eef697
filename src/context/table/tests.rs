//! The op table's rules, without a ring: identities, the label rule,
//! foreign and multishot completions, and claim records.

use super::claims::Claimed;
use super::*;

use crate::abi::{Cqe, CqeFlags};

const CAP: usize = usize::MAX - 1;

fn cqe(user_data: u64, res: i32, flags: CqeFlags) -> Cqe {
    Cqe {
        user_data,
        res,
        flags,
    }
}

fn track(table: &mut OpTable, label: u64, pins: bool) -> Result<u64, Refusal> {
    table.track_caller(label, pins, &mut KeepAlive::default(), CAP)
}

#[test]
fn operations_that_pin_nothing_share_labels_and_pinning_ones_do_not() {
    let mut table = OpTable::new();
    track(&mut table, 7, false).unwrap();
    track(&mut table, 7, false).unwrap();
    assert_eq!(table.label_count(7), 2);
    assert_eq!(track(&mut table, 7, true), Err(Refusal::SharedLabel));
    let pinned = track(&mut table, 8, true).unwrap();
    assert_eq!(track(&mut table, 8, false), Err(Refusal::SharedLabel));
    assert_eq!(track(&mut table, 8, true), Err(Refusal::SharedLabel));
    table.untrack(pinned);
    track(&mut table, 8, false).unwrap();
    assert_eq!(table.caller_ops(), 3);
}

#[test]
fn a_completion_releases_only_the_operation_whose_identity_it_carries() {
    let mut table = OpTable::new();
    let first = track(&mut table, 1, true).unwrap();
    let claimed = table.classify(cqe(first, 5, CqeFlags::empty())).unwrap();
    assert_eq!((claimed.label, claimed.res), (1, 5));
    table.yielded(&claimed);
    assert_eq!(table.caller_ops(), 0);
    // The slot is reused with a new generation: the old identity, posted
    // again (by another ring, say), is foreign and releases nothing.
    let second = track(&mut table, 1, true).unwrap();
    assert_ne!(first, second);
    let stale = table.classify(cqe(first, 0, CqeFlags::empty())).unwrap();
    assert_eq!(
        stale.label, first,
        "a foreign completion keeps its own user_data"
    );
    table.yielded(&stale);
    assert_eq!(table.caller_ops(), 1);
    for foreign in [0, 1, second ^ (1 << 63), table.no_identity()] {
        let claimed = table.classify(cqe(foreign, 0, CqeFlags::empty())).unwrap();
        table.yielded(&claimed);
        assert_eq!(table.caller_ops(), 1, "{foreign:#x} released something");
    }
}

#[test]
fn a_multishot_operation_stays_in_flight_until_its_last_completion() {
    let mut table = OpTable::new();
    let id = track(&mut table, 3, false).unwrap();
    for _ in 0..3 {
        let more = table.classify(cqe(id, 1, CqeFlags::MORE)).unwrap();
        table.yielded(&more);
        assert_eq!(table.caller_ops(), 1);
    }
    let last = table.classify(cqe(id, 0, CqeFlags::empty())).unwrap();
    table.yielded(&last);
    assert_eq!(table.caller_ops(), 0);
}

#[test]
fn the_contexts_own_completions_are_swallowed_and_released() {
    let mut table = OpTable::new();
    let own = table.track_internal(None, CAP).unwrap();
    assert_eq!(table.tracked(), 1);
    assert!(table.classify(cqe(own, 0, CqeFlags::empty())).is_none());
    assert_eq!(table.tracked(), 0);
}

#[test]
fn the_cap_counts_every_tracked_operation() {
    let mut table = OpTable::new();
    track(&mut table, 1, false).unwrap();
    table.track_internal(None, 2).unwrap();
    assert_eq!(
        table.track_caller(2, false, &mut KeepAlive::default(), 2),
        Err(Refusal::Full)
    );
    assert!(table.track_internal(None, 2).is_none());
    assert!(
        table.track_internal(None, 3).is_some(),
        "drain may go one over"
    );
}

#[test]
fn records_release_what_was_yielded_and_hand_back_the_rest_in_order() {
    let mut table = OpTable::new();
    let ids: Vec<u64> = (0..4)
        .map(|label| track(&mut table, label, true).unwrap())
        .collect();
    let items: Vec<Claimed> = ids
        .iter()
        .map(|&id| table.classify(cqe(id, 0, CqeFlags::empty())).unwrap())
        .collect();
    let record = table.free_record().unwrap();
    let board = ClaimBoard::new();
    for (i, item) in items.iter().enumerate() {
        board.write(record, i, *item);
    }
    table.open_record(record, items.len(), &board);
    board.publish_yielded(record, 1);
    table.settle_all(&board);
    assert_eq!(table.caller_ops(), 3, "one yielded, released");
    assert!(
        track(&mut table, 0, true).is_ok(),
        "its label is free again"
    );
    assert_eq!(track(&mut table, 1, true), Err(Refusal::SharedLabel));
    assert_eq!(table.close_record(record, 2, &board), 2);
    assert_eq!(table.caller_ops(), 3, "two handed back, still in flight");
    assert_eq!(table.returned(), 2);
    assert_eq!(
        table.returned.iter().map(|c| c.label).collect::<Vec<_>>(),
        [2, 3]
    );
    table.release_all_claims(&board);
    assert_eq!(table.caller_ops(), 1, "only the new label-0 operation");
}

#[test]
fn cancelling_by_label_finds_every_operation_with_it_oldest_first() {
    let mut table = OpTable::new();
    // Free two low slots after filling them, so the newest operation under
    // the label lands in a lower slot than the older ones: slot order is
    // then not age order.
    let low = [
        track(&mut table, 1, false).unwrap(),
        track(&mut table, 2, false).unwrap(),
    ];
    let a = track(&mut table, 5, false).unwrap();
    assert_eq!(table.identities_with_label(5), [a]);
    let b = track(&mut table, 5, false).unwrap();
    for id in low {
        table.untrack(id);
    }
    let c = track(&mut table, 5, false).unwrap();
    assert!(
        table.decode(c) < table.decode(a),
        "the premise: the newest has the lowest slot"
    );
    assert_eq!(table.identities_with_label(5), [a, b, c]);
    table.untrack(a);
    assert_eq!(table.identities_with_label(5), [b, c]);
    assert!(table.identities_with_label(6).is_empty());
}

#[test]
fn drain_sees_which_operations_no_cancellation_is_aimed_at() {
    let mut table = OpTable::new();
    let a = track(&mut table, 1, false).unwrap();
    let b = track(&mut table, 2, false).unwrap();
    table.track_internal(Some(a), CAP).unwrap();
    assert_eq!(table.uncancelled(), [b]);
}
