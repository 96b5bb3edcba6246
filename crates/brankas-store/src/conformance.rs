//! The conformance suite: what every [`Store`] backend must do, as one set of checks.
//!
//! A backend's tests call [`run_all`] with a factory for fresh, empty stores. The suite panics
//! (failing the test) on the first violated property, naming it.

use crate::{BlindTerm, Expect, ListEntry, NewVersion, PartitionId, RecordKey, Store, StoreError, StoredDek, VersionRow, WrappedKey, WriteBatch};
use brankas_vault::KekId;

/// Runs every check, each against a fresh store from `fresh`.
type Check = (&'static str, fn(&dyn Store));

pub fn run_all(fresh: &mut dyn FnMut() -> Box<dyn Store>) {
    let checks: &[Check] = &[
        ("meta", meta),
        ("deks", deks),
        ("create_read_versions", create_read_versions),
        ("expectations", expectations),
        ("batch_atomicity", batch_atomicity),
        ("commit_many_isolates_batches", commit_many_isolates_batches),
        ("partition_listing", partition_listing),
        ("partition_versions", partition_versions),
        ("search_entries", search_entries),
        ("blind_index", blind_index),
        ("unique_terms", unique_terms),
        ("use_once", use_once),
        ("clients", clients),
        ("concurrent_writers", concurrent_writers),
        ("concurrent_commits_keep_their_own_outcome", concurrent_commits_keep_their_own_outcome),
        ("data_keys_commit_with_their_batch", data_keys_commit_with_their_batch),
        ("audit_log", audit_log),
        ("audit_by_partition_over_a_long_log", audit_by_partition_over_a_long_log),
        ("guard", guard),
        ("appenders_and_admissions_race", appenders_and_admissions_race),
        ("state_counters", state_counters),
        ("erase_partition", erase_partition),
        ("list_entries_append", list_entries_append),
        ("list_entries_commit_with_their_batch", list_entries_commit_with_their_batch),
        ("list_entries_never_conflict", list_entries_never_conflict),
    ];
    for (name, check) in checks {
        let store = fresh();
        eprintln!("conformance: {name}");
        check(store.as_ref());
    }
}

fn key(n: u8) -> RecordKey {
    RecordKey([n; 32])
}
fn part(n: u8) -> PartitionId {
    PartitionId([n; 32])
}

/// A row for tests; `sealed` is arbitrary bytes (the store never interprets it).
pub fn sample_row(k: u8, version: u64, p: u8, rtype: &str) -> VersionRow {
    VersionRow {
        key: key(k),
        version,
        partition: part(p),
        resource_type: rtype.into(),
        deleted: false,
        last_updated_us: 1_700_000_000_000_000 + version as i64,
        dek_version: 1,
        sealed: vec![k, version as u8, p, 0xAB],
    }
}

/// The data key the suite uses for partition `p` (always the same bytes, so bringing it again
/// is not a race).
pub fn sample_dek(p: u8) -> StoredDek {
    StoredDek { partition: part(p), wrapped: WrappedKey { kek: KekId(1), key_version: 1, bytes: vec![p, 0xD0] } }
}

/// A batch of versions that brings the (sample) data keys of its partitions.
fn batch(versions: Vec<NewVersion>, index: Vec<(RecordKey, Vec<BlindTerm>)>) -> WriteBatch {
    let mut deks: Vec<StoredDek> = versions.iter().map(|v| sample_dek(v.row.partition.0[0])).collect();
    deks.dedup();
    WriteBatch { versions, index, deks, ..Default::default() }
}

fn put(s: &dyn Store, row: VersionRow, expect: Expect) -> crate::Result<()> {
    s.commit(&batch(vec![NewVersion { row, expect, entry: None }], vec![]))
}

fn meta(s: &dyn Store) {
    assert_eq!(s.get_meta("a").unwrap(), None);
    s.put_meta("a", b"1").unwrap();
    s.put_meta("a", b"2").unwrap();
    assert_eq!(s.get_meta("a").unwrap().as_deref(), Some(&b"2"[..]));
}

fn deks(s: &dyn Store) {
    let d1 = StoredDek { partition: part(1), wrapped: WrappedKey { kek: KekId(1), key_version: 1, bytes: vec![1, 2, 3] } };
    let d1b = StoredDek { partition: part(1), wrapped: WrappedKey { kek: KekId(1), key_version: 1, bytes: vec![9] } };
    assert_eq!(s.get_dek(&part(1)).unwrap(), None);
    assert_eq!(s.insert_dek(&d1).unwrap(), d1);
    // The first key wins; a racing second insert gets the first back.
    assert_eq!(s.insert_dek(&d1b).unwrap(), d1);
    assert_eq!(s.get_dek(&part(1)).unwrap(), Some(d1.clone()));
    for p in 2..=5 {
        s.insert_dek(&StoredDek { partition: part(p), wrapped: d1.wrapped.clone() }).unwrap();
    }
    let first = s.scan_deks(None, 2).unwrap();
    assert_eq!(first.iter().map(|d| d.partition).collect::<Vec<_>>(), vec![part(1), part(2)]);
    let rest = s.scan_deks(Some(&part(2)), 10).unwrap();
    assert_eq!(rest.len(), 3);
    let new = StoredDek { partition: part(1), wrapped: WrappedKey { kek: KekId(2), key_version: 1, bytes: vec![7] } };
    assert!(s.replace_dek(&d1, &new).unwrap());
    assert!(!s.replace_dek(&d1, &new).unwrap(), "replace must compare with the stored value");
    assert_eq!(s.get_dek(&part(1)).unwrap(), Some(new));
}

fn create_read_versions(s: &dyn Store) {
    put(s, sample_row(1, 1, 1, "Patient"), Expect::Absent).unwrap();
    put(s, sample_row(1, 2, 1, "Patient"), Expect::Version(1)).unwrap();
    let mut del = sample_row(1, 3, 1, "Patient");
    del.deleted = true;
    put(s, del.clone(), Expect::Version(2)).unwrap();
    assert_eq!(s.current(&key(1)).unwrap(), Some(del));
    assert_eq!(s.version(&key(1), 1).unwrap(), Some(sample_row(1, 1, 1, "Patient")));
    assert_eq!(s.version(&key(1), 9).unwrap(), None);
    let h = s.history(&key(1), None, 10).unwrap();
    assert_eq!(h.iter().map(|r| r.version).collect::<Vec<_>>(), vec![3, 2, 1]);
    let h = s.history(&key(1), Some(3), 1).unwrap();
    assert_eq!(h.iter().map(|r| r.version).collect::<Vec<_>>(), vec![2]);
    assert_eq!(s.current(&key(2)).unwrap(), None);
    assert!(s.history(&key(2), None, 10).unwrap().is_empty());
}

fn expectations(s: &dyn Store) {
    put(s, sample_row(1, 1, 1, "Observation"), Expect::Absent).unwrap();
    assert!(matches!(put(s, sample_row(1, 2, 1, "Observation"), Expect::Absent), Err(StoreError::Conflict { index: 0 })));
    assert!(matches!(put(s, sample_row(1, 2, 1, "Observation"), Expect::Version(7)), Err(StoreError::Conflict { .. })));
    // Versions only grow, even with Expect::Any.
    assert!(matches!(put(s, sample_row(1, 1, 1, "Observation"), Expect::Any), Err(StoreError::Conflict { .. })));
    put(s, sample_row(1, 2, 1, "Observation"), Expect::Any).unwrap();
    assert_eq!(s.current(&key(1)).unwrap().unwrap().version, 2);
}

fn batch_atomicity(s: &dyn Store) {
    put(s, sample_row(1, 1, 1, "Patient"), Expect::Absent).unwrap();
    let b = batch(
        vec![
            NewVersion { row: sample_row(2, 1, 1, "Observation"), expect: Expect::Absent, entry: None },
            NewVersion { row: sample_row(1, 2, 1, "Patient"), expect: Expect::Version(5), entry: None },
        ],
        vec![(key(2), vec![BlindTerm([9; 32])])],
    );
    assert!(matches!(s.commit(&b), Err(StoreError::Conflict { index: 1 })));
    assert_eq!(s.current(&key(2)).unwrap(), None, "a failed batch must leave nothing behind");
    assert!(s.lookup(&BlindTerm([9; 32])).unwrap().is_empty());
    assert_eq!(s.current(&key(1)).unwrap().unwrap().version, 1);
}

fn commit_many_isolates_batches(s: &dyn Store) {
    let ok = batch(vec![NewVersion { row: sample_row(1, 1, 1, "Patient"), expect: Expect::Absent, entry: None }], vec![]);
    let bad = batch(
        vec![
            NewVersion { row: sample_row(3, 1, 1, "Patient"), expect: Expect::Absent, entry: None },
            NewVersion { row: sample_row(1, 1, 1, "Patient"), expect: Expect::Absent, entry: None },
        ],
        vec![],
    );
    let ok2 = batch(vec![NewVersion { row: sample_row(2, 1, 2, "Patient"), expect: Expect::Absent, entry: None }], vec![]);
    let res = s.commit_many(&[ok, bad, ok2]).unwrap();
    assert!(res[0].is_ok() && res[1].is_err() && res[2].is_ok());
    assert!(s.current(&key(1)).unwrap().is_some());
    assert!(s.current(&key(2)).unwrap().is_some());
    assert!(s.current(&key(3)).unwrap().is_none(), "a failed batch inside commit_many must roll back whole");
}

fn partition_listing(s: &dyn Store) {
    put(s, sample_row(1, 1, 1, "Patient"), Expect::Absent).unwrap();
    put(s, sample_row(2, 1, 1, "Observation"), Expect::Absent).unwrap();
    put(s, sample_row(2, 2, 1, "Observation"), Expect::Version(1)).unwrap();
    put(s, sample_row(3, 1, 1, "Observation"), Expect::Absent).unwrap();
    let mut d = sample_row(3, 2, 1, "Observation");
    d.deleted = true;
    put(s, d, Expect::Version(1)).unwrap();
    put(s, sample_row(4, 1, 2, "Observation"), Expect::Absent).unwrap();
    let obs = s.partition_current(&part(1), Some("Observation")).unwrap();
    assert_eq!(obs.len(), 1, "current, non-deleted, this partition only");
    assert_eq!(obs[0].version, 2);
    let all = s.partition_current(&part(1), None).unwrap();
    assert_eq!(all.len(), 2);
    assert!(s.partition_current(&part(9), None).unwrap().is_empty());
}

/// Every version of a partition (deleted ones too), newest first, paged by place, from a
/// write time on, of one type or all; other partitions' versions never.
fn partition_versions(s: &dyn Store) {
    use crate::VersionPos;
    let at = |k: u8, v: u64, p: u8, rtype: &str, t: i64| {
        let mut r = sample_row(k, v, p, rtype);
        r.last_updated_us = t;
        r
    };
    put(s, at(1, 1, 1, "Patient", 10), Expect::Absent).unwrap();
    put(s, at(2, 1, 1, "Observation", 20), Expect::Absent).unwrap();
    put(s, at(3, 1, 1, "Observation", 20), Expect::Absent).unwrap();
    let mut d = at(2, 2, 1, "Observation", 30);
    d.deleted = true;
    put(s, d, Expect::Version(1)).unwrap();
    put(s, at(4, 1, 2, "Observation", 25), Expect::Absent).unwrap();
    let ids = |rows: Vec<VersionRow>| rows.iter().map(|r| (r.key.0[0], r.version)).collect::<Vec<_>>();
    // Newest first; at one write time, the greater record key first.
    assert_eq!(ids(s.partition_versions(&part(1), None, None, None, 10).unwrap()), vec![(2, 2), (3, 1), (2, 1), (1, 1)]);
    assert_eq!(ids(s.partition_versions(&part(1), Some("Observation"), None, None, 10).unwrap()), vec![(2, 2), (3, 1), (2, 1)]);
    assert!(s.partition_versions(&part(1), None, None, None, 10).unwrap()[0].deleted);
    // Paged: each page continues after the last row of the one before, ties included.
    let first = s.partition_versions(&part(1), None, None, None, 2).unwrap();
    let after = VersionPos::of(first.last().unwrap());
    assert_eq!(ids(s.partition_versions(&part(1), None, None, Some(&after), 2).unwrap()), vec![(2, 1), (1, 1)]);
    // From a write time on; before one.
    assert_eq!(ids(s.partition_versions(&part(1), None, Some(20), None, 10).unwrap()), vec![(2, 2), (3, 1), (2, 1)]);
    assert_eq!(ids(s.partition_versions(&part(1), None, None, Some(&VersionPos::written_before(30)), 10).unwrap()), vec![(3, 1), (2, 1), (1, 1)]);
    assert_eq!(ids(s.partition_versions(&part(2), None, None, None, 10).unwrap()), vec![(4, 1)]);
    assert!(s.partition_versions(&part(9), None, None, None, 10).unwrap().is_empty());
    // The rows are whole: what was sealed comes back.
    assert_eq!(s.partition_versions(&part(2), None, None, None, 1).unwrap()[0], at(4, 1, 2, "Observation", 25));
    // A record that moves to another partition: its versions before the move are listed by
    // neither, those after it by the new one.
    put(s, at(3, 2, 2, "Observation", 40), Expect::Version(1)).unwrap();
    assert_eq!(ids(s.partition_versions(&part(1), None, None, None, 10).unwrap()), vec![(2, 2), (2, 1), (1, 1)]);
    assert_eq!(ids(s.partition_versions(&part(2), None, None, None, 10).unwrap()), vec![(3, 2), (4, 1)]);
}

/// Search entries: stored with their version, listed with the current version's facts (no
/// sealed resource), replaced or dropped by the next version, gone with an erasure.
fn search_entries(s: &dyn Store) {
    let nv = |k: u8, v: u64, p: u8, rtype: &str, expect: Expect, entry: Option<&[u8]>| NewVersion { row: sample_row(k, v, p, rtype), expect, entry: entry.map(<[u8]>::to_vec) };
    let facts = |r: &VersionRow, entry: Option<&[u8]>| crate::EntryRow {
        key: r.key,
        version: r.version,
        partition: r.partition,
        resource_type: r.resource_type.clone(),
        last_updated_us: r.last_updated_us,
        dek_version: r.dek_version,
        entry: entry.map(<[u8]>::to_vec),
    };
    s.commit(&batch(
        vec![
            nv(1, 1, 1, "Observation", Expect::Absent, Some(b"e1")),
            nv(2, 1, 1, "Observation", Expect::Absent, None),
            nv(3, 1, 1, "Condition", Expect::Absent, Some(b"e3")),
            nv(4, 1, 2, "Observation", Expect::Absent, Some(b"e4")),
        ],
        vec![],
    ))
    .unwrap();
    let mut obs = s.partition_entries(&part(1), Some("Observation")).unwrap();
    obs.sort_by_key(|e| e.key);
    assert_eq!(obs, vec![facts(&sample_row(1, 1, 1, "Observation"), Some(b"e1")), facts(&sample_row(2, 1, 1, "Observation"), None)]);
    assert_eq!(s.partition_entries(&part(1), None).unwrap().len(), 3);
    // The next version's entry replaces the record's; a version without one drops it.
    s.commit(&batch(vec![nv(1, 2, 1, "Observation", Expect::Version(1), Some(b"e1v2")), nv(3, 2, 1, "Condition", Expect::Version(1), None)], vec![])).unwrap();
    let by_key = |k: u8| s.partition_entries(&part(1), None).unwrap().into_iter().find(|e| e.key == key(k)).unwrap();
    assert_eq!(by_key(1), facts(&sample_row(1, 2, 1, "Observation"), Some(b"e1v2")));
    assert_eq!(by_key(3).entry, None);
    // Deleted records are not listed, like partition_current.
    let mut d = sample_row(1, 3, 1, "Observation");
    d.deleted = true;
    s.commit(&batch(vec![NewVersion { row: d, expect: Expect::Version(2), entry: None }], vec![])).unwrap();
    assert!(s.partition_entries(&part(1), Some("Observation")).unwrap().iter().all(|e| e.key != key(1)));
    // Erasure takes the entries with the ciphertext.
    s.erase_partition(&part(2)).unwrap();
    assert_eq!(s.partition_entries(&part(2), None).unwrap().iter().map(|e| e.entry.clone()).collect::<Vec<_>>(), vec![None]);
    assert!(s.partition_entries(&part(9), None).unwrap().is_empty());
}

fn blind_index(s: &dyn Store) {
    let t1 = BlindTerm([1; 32]);
    let t2 = BlindTerm([2; 32]);
    s.commit(&batch(vec![], vec![(key(1), vec![t1, t2]), (key(2), vec![t1])])).unwrap();
    let mut hits = s.lookup(&t1).unwrap();
    hits.sort();
    assert_eq!(hits, vec![key(1), key(2)]);
    // Replacing a record's terms drops the old ones.
    s.commit(&batch(vec![], vec![(key(1), vec![t2])])).unwrap();
    assert_eq!(s.lookup(&t1).unwrap(), vec![key(2)]);
    s.commit(&batch(vec![], vec![(key(1), vec![])])).unwrap();
    assert!(s.lookup(&t2).unwrap().is_empty());
}

/// A record created with its unique terms (a Patient with its NIK).
fn with_unique(k: u8, term: BlindTerm, also: BlindTerm) -> WriteBatch {
    let mut b = batch(vec![NewVersion { row: sample_row(k, 1, k, "Patient"), expect: Expect::Absent, entry: None }], vec![(key(k), vec![term, also])]);
    b.unique = vec![(key(k), term)];
    b
}

fn unique_terms(s: &dyn Store) {
    let (nik, nik2, name) = (BlindTerm([1; 32]), BlindTerm([2; 32]), BlindTerm([9; 32]));
    s.commit(&with_unique(1, nik, name)).unwrap();
    // A second record may not take the term: nothing of its batch is written.
    let r = s.commit(&with_unique(2, nik, name));
    assert!(matches!(r, Err(StoreError::TermHeld { holder }) if holder == key(1)), "{r:?}");
    assert_eq!(s.current(&key(2)).unwrap(), None);
    assert_eq!(s.lookup(&name).unwrap(), vec![key(1)]);
    // Terms that are not unique are shared freely; the holder itself may keep its own.
    s.commit(&with_unique(3, nik2, name)).unwrap();
    let mut again = batch(vec![], vec![(key(1), vec![nik, name])]);
    again.unique = vec![(key(1), nik)];
    s.commit(&again).unwrap();
    // Once the holder lets the term go, another record takes it, in one batch.
    let mut moved = batch(vec![NewVersion { row: sample_row(2, 1, 2, "Patient"), expect: Expect::Absent, entry: None }], vec![(key(1), vec![name]), (key(2), vec![nik])]);
    moved.unique = vec![(key(2), nik)];
    s.commit(&moved).unwrap();
    assert_eq!(s.lookup(&nik).unwrap(), vec![key(2)]);
    // Two records of one batch cannot both take a term.
    let mut both = batch(vec![], vec![(key(4), vec![BlindTerm([4; 32])]), (key(5), vec![BlindTerm([4; 32])])]);
    both.unique = vec![(key(4), BlindTerm([4; 32])), (key(5), BlindTerm([4; 32]))];
    assert!(matches!(s.commit(&both), Err(StoreError::TermHeld { .. })));
    assert!(s.lookup(&BlindTerm([4; 32])).unwrap().is_empty());
    // Eight writers race for one term: exactly one takes it, whichever commits first.
    let term = BlindTerm([7; 32]);
    let results: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = (10..18u8).map(|k| sc.spawn(move || s.commit(&with_unique(k, term, name)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::TermHeld { .. }))), "{results:?}");
    assert_eq!(s.lookup(&term).unwrap().len(), 1);
}

fn use_once(s: &dyn Store) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let hour = 3_600_000_000;
    assert!(s.use_once(&[1; 32], now + hour).unwrap(), "first use");
    assert!(!s.use_once(&[1; 32], now + hour).unwrap(), "second use within its lifetime");
    assert!(s.use_once(&[2; 32], now + hour).unwrap(), "another key");
    // An expired entry may be used again (its token would be refused as expired anyway).
    assert!(s.use_once(&[3; 32], now - 1).unwrap());
    assert!(s.use_once(&[3; 32], now + hour).unwrap());
    assert!(!s.use_once(&[3; 32], now + hour).unwrap());
}

fn clients(s: &dyn Store) {
    assert_eq!(s.get_client("c1").unwrap(), None);
    s.put_client("c1", b"{}").unwrap();
    s.put_client("c0", b"{\"a\":1}").unwrap();
    s.put_client("c1", b"{\"b\":2}").unwrap();
    assert_eq!(s.get_client("c1").unwrap().as_deref(), Some(&b"{\"b\":2}"[..]));
    assert_eq!(s.list_clients().unwrap(), vec!["c0".to_string(), "c1".to_string()]);
}

fn concurrent_writers(s: &dyn Store) {
    // Eight threads race to write version 2 of the same record: exactly one wins.
    put(s, sample_row(1, 1, 1, "Patient"), Expect::Absent).unwrap();
    let wins = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for _ in 0..8 {
            sc.spawn(|| {
                if put(s, sample_row(1, 2, 1, "Patient"), Expect::Version(1)).is_ok() {
                    wins.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(wins.load(std::sync::atomic::Ordering::SeqCst), 1);
}

fn concurrent_commits_keep_their_own_outcome(s: &dyn Store) {
    // 16 threads commit at once (a backend may group them): each batch lands or fails alone,
    // by its own expectations, with its own outcome. Thread t writes record 100 + t (fresh,
    // lands), and every second thread also races for record 1 (exactly one of those wins;
    // a loser's whole batch, its fresh record too, is left out).
    put(s, sample_row(1, 1, 1, "Patient"), Expect::Absent).unwrap();
    let outcomes: Vec<(u8, bool, crate::Result<()>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..16u8)
            .map(|t| {
                sc.spawn(move || {
                    let contested = t % 2 == 0;
                    let mut versions = vec![NewVersion { row: sample_row(100 + t, 1, 1 + t % 3, "Observation"), expect: Expect::Absent, entry: None }];
                    if contested {
                        versions.push(NewVersion { row: sample_row(1, 2, 1, "Patient"), expect: Expect::Version(1), entry: None });
                    }
                    for round in 0..5u8 {
                        let b = batch(vec![NewVersion { row: sample_row(200 + t, u64::from(round) + 1, 1, "Encounter"), expect: Expect::Any, entry: None }], vec![]);
                        s.commit(&b).unwrap();
                    }
                    (t, contested, s.commit(&batch(versions, vec![])))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut wins = 0;
    for (t, contested, r) in outcomes {
        let fresh = s.current(&key(100 + t)).unwrap();
        assert_eq!(s.current(&key(200 + t)).unwrap().map(|r| r.version), Some(5), "thread {t}: every unconditioned commit lands");
        match (contested, r) {
            (false, r) => {
                assert!(r.is_ok(), "thread {t}: an uncontested batch must land: {r:?}");
                assert!(fresh.is_some());
            }
            (true, Ok(())) => {
                wins += 1;
                assert!(fresh.is_some(), "thread {t}: a batch that won must be stored whole");
            }
            (true, Err(e)) => {
                assert!(matches!(e, StoreError::Conflict { index: 1 }), "thread {t}: a lost race is a conflict on its own item: {e:?}");
                assert!(fresh.is_none(), "thread {t}: a batch that lost must leave nothing");
            }
        }
    }
    assert_eq!(wins, 1, "exactly one contested batch wins");
    assert_eq!(s.current(&key(1)).unwrap().unwrap().version, 2);
}

fn data_keys_commit_with_their_batch(s: &dyn Store) {
    let nv = |k: u8, p: u8| NewVersion { row: sample_row(k, 1, p, "Patient"), expect: Expect::Absent, entry: None };
    // A version without a key for its partition is refused, and leaves nothing.
    let r = s.commit(&WriteBatch { versions: vec![nv(1, 1)], ..Default::default() });
    assert!(matches!(r, Err(StoreError::MissingDataKey)), "{r:?}");
    assert_eq!(s.current(&key(1)).unwrap(), None);
    // The key comes with the batch: both are stored.
    s.commit(&WriteBatch { versions: vec![nv(1, 1)], deks: vec![sample_dek(1)], ..Default::default() }).unwrap();
    assert_eq!(s.get_dek(&part(1)).unwrap(), Some(sample_dek(1)));
    assert!(s.current(&key(1)).unwrap().is_some());
    // Bringing the same key again is fine; a different key for the partition lost a race.
    s.commit(&WriteBatch { versions: vec![nv(2, 1)], deks: vec![sample_dek(1)], ..Default::default() }).unwrap();
    let other = StoredDek { partition: part(1), wrapped: WrappedKey { kek: KekId(1), key_version: 1, bytes: vec![0xEE] } };
    let r = s.commit(&WriteBatch { versions: vec![nv(3, 1)], deks: vec![other], ..Default::default() });
    assert!(matches!(r, Err(StoreError::DataKeyRace)), "{r:?}");
    assert_eq!(s.current(&key(3)).unwrap(), None);
    assert_eq!(s.get_dek(&part(1)).unwrap(), Some(sample_dek(1)), "the stored key must not change");
    // A batch that fails keeps its new key out too.
    let r = s.commit(&WriteBatch { versions: vec![nv(4, 2), nv(1, 2)], deks: vec![sample_dek(2)], ..Default::default() });
    assert!(matches!(r, Err(StoreError::Conflict { index: 1 })), "{r:?}");
    assert_eq!(s.get_dek(&part(2)).unwrap(), None, "a failed batch must not leave its data key behind");
    // In commit_many each batch stands alone, key included.
    let res = s
        .commit_many(&[
            WriteBatch { versions: vec![nv(5, 3)], deks: vec![sample_dek(3)], ..Default::default() },
            WriteBatch { versions: vec![nv(6, 4)], ..Default::default() },
            WriteBatch { versions: vec![nv(7, 3)], ..Default::default() },
        ])
        .unwrap();
    assert!(res[0].is_ok(), "{:?}", res[0]);
    assert!(matches!(res[1], Err(StoreError::MissingDataKey)), "{:?}", res[1]);
    assert!(res[2].is_ok(), "a later batch sees the key an earlier one brought: {:?}", res[2]);
    assert!(s.current(&key(6)).unwrap().is_none());
}

fn audit_row(seq: u64, p: Option<u8>, actor: u8) -> crate::AuditRow {
    crate::AuditRow { seq, time_us: 1_000 + seq as i64, partition: p.map(part), actor: [actor; 32], sealed: vec![seq as u8; 5] }
}

fn audit_append(rows: Vec<crate::AuditRow>, size: u64, checkpoint: bool) -> crate::AuditAppend {
    crate::AuditAppend {
        nodes: rows.iter().map(|r| (8u8, r.seq, [r.seq as u8; 32])).collect(),
        head: Some(crate::AuditHead { size, frontier: vec![size as u8] }),
        checkpoint: checkpoint.then(|| crate::AuditCheckpointRow { size, time_us: 7, note: format!("note {size}") }),
        rows,
    }
}

fn audit_log(s: &dyn Store) {
    assert_eq!(s.audit_head().unwrap(), None);
    assert!(s.audit_latest_checkpoint().unwrap().is_none());
    // The first append must start at 0, continue without gaps, and bring the new head.
    assert!(matches!(s.audit_append(&audit_append(vec![audit_row(1, None, 1)], 2, false)), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.audit_append(&audit_append(vec![audit_row(0, None, 1), audit_row(2, None, 1)], 3, false)), Err(StoreError::Conflict { .. })));
    assert!(matches!(s.audit_append(&audit_append(vec![audit_row(0, None, 1)], 5, false)), Err(StoreError::Conflict { .. })));
    assert_eq!(s.audit_head().unwrap(), None, "a refused append writes nothing");
    s.audit_append(&audit_append(vec![audit_row(0, Some(1), 1), audit_row(1, None, 2), audit_row(2, Some(2), 1)], 3, true)).unwrap();
    // A second writer that still believes the log is empty is refused.
    assert!(matches!(s.audit_append(&audit_append(vec![audit_row(0, None, 9)], 1, false)), Err(StoreError::Conflict { .. })));
    s.audit_append(&audit_append(vec![audit_row(3, Some(1), 2), audit_row(4, Some(1), 1)], 5, false)).unwrap();
    // A checkpoint alone.
    s.audit_append(&crate::AuditAppend { checkpoint: Some(crate::AuditCheckpointRow { size: 5, time_us: 9, note: "note 5".into() }), ..Default::default() }).unwrap();
    assert_eq!(s.audit_head().unwrap(), Some(crate::AuditHead { size: 5, frontier: vec![5] }));
    let all = s.audit_rows(0, 100).unwrap();
    assert_eq!(all, (0..5).map(|i| audit_row(i, [Some(1), None, Some(2), Some(1), Some(1)][i as usize], [1, 2, 1, 2, 1][i as usize])).collect::<Vec<_>>());
    assert_eq!(s.audit_rows(3, 1).unwrap(), vec![audit_row(3, Some(1), 2)]);
    assert_eq!(s.audit_by_partition(&part(1), None, 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 3, 0]);
    assert_eq!(s.audit_by_partition(&part(1), Some(4), 1).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(s.audit_by_actor(&[2; 32], None, 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 1]);
    assert_eq!(s.audit_latest(Some(2), 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 0]);
    assert_eq!(s.audit_nodes(8, 1, 2).unwrap(), vec![(1, [1; 32]), (2, [2; 32])]);
    assert!(s.audit_nodes(16, 0, 2).unwrap().is_empty());
    let cps = s.audit_checkpoints(0, 10).unwrap();
    assert_eq!(cps.iter().map(|c| c.size).collect::<Vec<_>>(), vec![3, 5]);
    assert_eq!(s.audit_latest_checkpoint().unwrap().unwrap().note, "note 5");
    assert_eq!(s.audit_checkpoints(4, 10).unwrap().len(), 1);
    // Archiving: the records before the mark go, everything else stays.
    assert_eq!(s.audit_archived().unwrap(), None);
    assert!(matches!(s.audit_archive(6, "beyond"), Err(StoreError::Conflict { .. })));
    s.audit_archive(3, "mark 3").unwrap();
    assert_eq!(s.audit_archived().unwrap(), Some((3, "mark 3".to_string())));
    assert_eq!(s.audit_rows(0, 100).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(s.audit_by_partition(&part(1), None, 10).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 3]);
    assert_eq!(s.audit_nodes(8, 0, 10).unwrap().len(), 5, "subtree hashes are kept");
    assert_eq!(s.audit_head().unwrap(), Some(crate::AuditHead { size: 5, frontier: vec![5] }));
    assert_eq!(s.audit_checkpoints(0, 10).unwrap().len(), 2);
    assert!(matches!(s.audit_archive(2, "back"), Err(StoreError::Conflict { .. })), "the mark never moves back");
    s.audit_append(&audit_append(vec![audit_row(5, None, 1)], 6, false)).unwrap();
    assert_eq!(s.audit_rows(0, 100).unwrap().len(), 3, "appending goes on after an archive");
}

/// A patient's records are found whole and in order however long the log grows (a backend
/// may index them in runs: 40,000 records cross the SQLite store's runs of 16,384), page by
/// page, before and after an archive mark in the middle of a run.
fn audit_by_partition_over_a_long_log(s: &dyn Store) {
    const N: u64 = 40_000;
    // Partition 1 every 7th record, partition 2 every 1,000th, partition 3 once, the rest none.
    let p = |seq: u64| match seq {
        _ if seq == 20_000 => Some(3),
        _ if seq % 1_000 == 999 => Some(2),
        _ if seq.is_multiple_of(7) => Some(1),
        _ => None,
    };
    let mut seq = 0;
    while seq < N {
        let rows: Vec<_> = (seq..(seq + 1_000).min(N)).map(|i| audit_row(i, p(i), (i % 3) as u8)).collect();
        seq += rows.len() as u64;
        s.audit_append(&audit_append(rows, seq, false)).unwrap();
    }
    let walk = |part_n: u8, page: usize| {
        let (mut all, mut before) = (Vec::new(), None);
        loop {
            let rows = s.audit_by_partition(&part(part_n), before, page).unwrap();
            assert!(rows.len() <= page);
            let Some(last) = rows.last() else { break };
            before = Some(last.seq);
            all.extend(rows.iter().map(|r| r.seq));
        }
        all
    };
    let expect = |part_n: u8, from: u64| (from..N).rev().filter(|i| p(*i) == Some(part_n)).collect::<Vec<_>>();
    for page in [1, 37, 500, 10_000] {
        assert_eq!(walk(2, page), expect(2, 0), "page {page}");
    }
    assert_eq!(walk(1, 999), expect(1, 0));
    assert_eq!(walk(3, 5), vec![20_000]);
    assert_eq!(s.audit_by_partition(&part(1), Some(16_384 + 3), 2).unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![16_380, 16_373], "across a run's edge");
    let rows = s.audit_by_partition(&part(1), None, 3).unwrap();
    assert_eq!(rows, [39_998, 39_991, 39_984].map(|i| audit_row(i, Some(1), (i % 3) as u8)), "whole rows");
    s.audit_archive(17_000, "mark").unwrap();
    assert_eq!(walk(1, 250), expect(1, 17_000));
    assert_eq!(walk(3, 5), vec![20_000]);
    // Appending goes on, and what it adds is found.
    s.audit_append(&audit_append(vec![audit_row(N, Some(3), 1)], N + 1, false)).unwrap();
    assert_eq!(walk(3, 1), vec![N, 20_000]);
}

/// What several servers do at once on one store: eight appenders continue the audit log from
/// the same head (exactly one lands, the log has no gap or fork), and eight admissions of
/// different patients under a budget of three (exactly three are admitted).
fn appenders_and_admissions_race(s: &dyn Store) {
    s.audit_append(&audit_append(vec![audit_row(0, Some(1), 1)], 1, false)).unwrap();
    let results: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..8u8).map(|a| sc.spawn(move || s.audit_append(&audit_append(vec![audit_row(1, Some(a), a), audit_row(2, None, a)], 3, false)))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || matches!(r, Err(StoreError::Conflict { .. }))), "{results:?}");
    let rows = s.audit_rows(0, 10).unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert_eq!(rows[1].actor, rows[2].actor, "the two rows of one append, not a mix");
    assert_eq!(s.audit_head().unwrap().map(|h| h.size), Some(3));

    let (h, d) = (490_000, 20_400);
    let admitted: Vec<bool> = std::thread::scope(|sc| {
        let handles: Vec<_> = (1..=8u8).map(|p| sc.spawn(move || s.guard_admit("racer", h, d, &[part(p)], 3, 100).unwrap().admitted)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(admitted.iter().filter(|a| **a).count(), 3, "{admitted:?}");
    assert_eq!(s.guard_usage("racer", h, d).unwrap(), (3, 3));
}

fn guard(s: &dyn Store) {
    let (h, d) = (490_000, 20_400);
    // Three distinct patients fit a budget of 3 an hour; repeats are free.
    let a = s.guard_admit("c1", h, d, &[part(1), part(2), part(1)], 3, 10).unwrap();
    assert_eq!(a, crate::GuardAdmission { admitted: true, hour: 2, day: 2 });
    assert!(s.guard_admit("c1", h, d, &[part(2), part(3)], 3, 10).unwrap().admitted);
    assert!(s.guard_admit("c1", h, d, &[part(1), part(2), part(3)], 3, 10).unwrap().admitted, "all already seen");
    // A fourth is refused, and nothing of the refused request is counted.
    let r = s.guard_admit("c1", h, d, &[part(4), part(1)], 3, 10).unwrap();
    assert_eq!(r, crate::GuardAdmission { admitted: false, hour: 4, day: 4 });
    assert_eq!(s.guard_usage("c1", h, d).unwrap(), (3, 3));
    // The next hour starts afresh; the day goes on counting and has its own limit.
    assert!(s.guard_admit("c1", h + 1, d, &[part(4)], 3, 4).unwrap().admitted);
    let r = s.guard_admit("c1", h + 1, d, &[part(5)], 3, 4).unwrap();
    assert!(!r.admitted && r.day == 5 && r.hour == 2, "{r:?}");
    // Clients are counted apart.
    assert_eq!(s.guard_usage("c2", h, d).unwrap(), (0, 0));
    assert!(s.guard_admit("c2", h, d, &[part(9)], 1, 1).unwrap().admitted);
    // Addresses and daily counters.
    assert_eq!(s.guard_address("c1", "10.0.0.1", 1).unwrap(), (true, 0));
    assert_eq!(s.guard_address("c1", "10.0.0.1", 2).unwrap(), (false, 0));
    assert_eq!(s.guard_address("c1", "10.0.0.2", 3).unwrap(), (true, 1));
    assert_eq!(s.guard_address("c2", "10.0.0.2", 3).unwrap(), (true, 0));
    assert_eq!(s.guard_bump("c1", "break-glass", d).unwrap(), 1);
    assert_eq!(s.guard_bump("c1", "break-glass", d).unwrap(), 2);
    assert_eq!(s.guard_bump("c1", "break-glass", d + 1).unwrap(), 1);
    assert_eq!(s.guard_bump("c2", "break-glass", d).unwrap(), 1);
    // Canaries and alerts.
    assert!(s.canaries_among(&[part(1)]).unwrap().is_empty());
    s.canary_add(&[part(7), part(8)]).unwrap();
    assert_eq!(s.canaries_among(&[part(1), part(8), part(7), part(8)]).unwrap(), vec![part(8), part(7)]);
    let mk = |k: &str| crate::AlertRow { id: 0, time_us: 5, kind: k.into(), severity: "high".into(), client_id: Some("c1".into()), detail: "{}".into() };
    let first = s.alert_add(&mk("a")).unwrap();
    let second = s.alert_add(&mk("b")).unwrap();
    assert!(second > first);
    let all = s.alerts(None, 10).unwrap();
    assert_eq!(all.iter().map(|a| a.kind.as_str()).collect::<Vec<_>>(), vec!["b", "a"]);
    assert_eq!(s.alerts(Some(second), 10).unwrap().len(), 1);
    assert_eq!(s.canaries().unwrap(), vec![part(7), part(8)]);
    let epoch = s.state_counters().unwrap().guard_epoch;
    assert!(!epoch.is_empty());
    assert_eq!(s.state_counters().unwrap().guard_epoch, epoch, "the guard's identity is stable");
}

/// The version counter follows every stored version, in the commit's transaction.
fn state_counters(s: &dyn Store) {
    let nv = |k: u8, v: u64, expect: Expect| NewVersion { row: sample_row(k, v, 9, "Observation"), expect, entry: None };
    assert_eq!((s.state_counters().unwrap().versions, s.versions_present().unwrap()), (0, 0));
    s.commit(&batch(vec![nv(1, 1, Expect::Absent), nv(2, 1, Expect::Absent)], vec![])).unwrap();
    // A refused batch counts nothing.
    assert!(s.commit(&batch(vec![nv(3, 1, Expect::Absent), nv(1, 2, Expect::Version(7))], vec![])).is_err());
    let r = s.commit_many(&[batch(vec![nv(1, 2, Expect::Version(1))], vec![]), batch(vec![nv(2, 2, Expect::Version(5))], vec![])]);
    assert!(r.unwrap()[1].is_err());
    assert_eq!((s.state_counters().unwrap().versions, s.versions_present().unwrap()), (3, 3));
}

/// Erasing a partition: its key becomes the tombstone, its records lose their blind terms and
/// their sealed bytes, everything else (other partitions, row and version counts) stays.
fn erase_partition(s: &dyn Store) {
    let (t1, t2) = (BlindTerm([1; 32]), BlindTerm([2; 32]));
    let nv = |k: u8, v: u64, p: u8| NewVersion { row: sample_row(k, v, p, "Patient"), expect: Expect::Any, entry: None };
    s.commit(&batch(vec![nv(1, 1, 5), nv(1, 2, 5), nv(2, 1, 6)], vec![(key(1), vec![t1, t2]), (key(2), vec![t1])])).unwrap();
    assert_eq!(s.erase_partition(&part(5)).unwrap(), 1);
    assert!(s.get_dek(&part(5)).unwrap().unwrap().wrapped.is_erased());
    assert_eq!(s.get_dek(&part(6)).unwrap(), Some(sample_dek(6)));
    assert_eq!(s.lookup(&t1).unwrap(), vec![key(2)]);
    assert!(s.lookup(&t2).unwrap().is_empty());
    for v in [1, 2] {
        assert!(s.version(&key(1), v).unwrap().unwrap().sealed.is_empty(), "version {v}'s ciphertext is gone");
    }
    assert_eq!(s.current(&key(1)).unwrap().map(|r| r.version), Some(2), "the record keeps its place (reads find it erased)");
    assert_eq!(s.current(&key(2)).unwrap().unwrap(), sample_row(2, 1, 6, "Patient"));
    assert_eq!((s.state_counters().unwrap().versions, s.versions_present().unwrap()), (3, 3));
    // Idempotent, and a partition without a key gets the tombstone.
    assert_eq!(s.erase_partition(&part(5)).unwrap(), 1);
    assert_eq!(s.erase_partition(&part(7)).unwrap(), 0);
    assert!(s.get_dek(&part(7)).unwrap().unwrap().wrapped.is_erased());
}

fn entry(list: u8, e: u8, content: u8) -> ListEntry {
    ListEntry { list: [list; 32], entry: [e; 32], sealed: vec![list, e, content, 0xEE] }
}

fn entries_only(entries: Vec<ListEntry>) -> WriteBatch {
    WriteBatch { list_entries: entries, ..Default::default() }
}

/// Entries are appended per list and read back per list, in entry order; an entry stored
/// again keeps the first one's content; they are not versions.
fn list_entries_append(s: &dyn Store) {
    assert!(s.list_entries(&[[1; 32]]).unwrap().is_empty());
    s.commit(&entries_only(vec![entry(1, 3, 0), entry(1, 2, 0), entry(2, 1, 0)])).unwrap();
    assert_eq!(s.list_entries(&[[1; 32]]).unwrap(), vec![entry(1, 2, 0), entry(1, 3, 0)]);
    assert_eq!(s.list_entries(&[[2; 32], [9; 32], [1; 32]]).unwrap(), vec![entry(1, 2, 0), entry(1, 3, 0), entry(2, 1, 0)], "several lists, in (list, entry) order");
    assert_eq!(s.list_entries(&[[2; 32], [2; 32]]).unwrap(), vec![entry(2, 1, 0)], "a list named twice is read once");
    // The same entry again (another sealing of the same content): no error, no change.
    s.commit(&entries_only(vec![entry(1, 2, 7), entry(1, 4, 7)])).unwrap();
    assert_eq!(s.list_entries(&[[1; 32]]).unwrap(), vec![entry(1, 2, 0), entry(1, 3, 0), entry(1, 4, 7)]);
    assert_eq!((s.state_counters().unwrap().versions, s.versions_present().unwrap()), (0, 0), "entries are not versions");
    // An erasure leaves the lists (their entries are sealed under another partition's key).
    s.erase_partition(&part(1)).unwrap();
    assert_eq!(s.list_entries(&[[1; 32]]).unwrap().len(), 3);
}

/// Entries land with the rest of their batch or not at all, in `commit` and in `commit_many`.
fn list_entries_commit_with_their_batch(s: &dyn Store) {
    put(s, sample_row(1, 1, 1, "Encounter"), Expect::Absent).unwrap();
    let mut b = batch(vec![NewVersion { row: sample_row(2, 1, 1, "Encounter"), expect: Expect::Absent, entry: None }], vec![]);
    b.list_entries.push(entry(5, 2, 0));
    s.commit(&b).unwrap();
    assert_eq!(s.list_entries(&[[5; 32]]).unwrap(), vec![entry(5, 2, 0)]);
    let mut bad = batch(vec![NewVersion { row: sample_row(1, 2, 1, "Encounter"), expect: Expect::Version(9), entry: None }], vec![]);
    bad.list_entries.push(entry(5, 1, 0));
    assert!(matches!(s.commit(&bad), Err(StoreError::Conflict { index: 0 })));
    assert_eq!(s.list_entries(&[[5; 32]]).unwrap(), vec![entry(5, 2, 0)], "a refused batch adds no entry");
    let mut ok = batch(vec![NewVersion { row: sample_row(3, 1, 1, "Encounter"), expect: Expect::Absent, entry: None }], vec![]);
    ok.list_entries.push(entry(5, 3, 0));
    let res = s.commit_many(&[bad, ok]).unwrap();
    assert!(res[0].is_err() && res[1].is_ok());
    assert_eq!(s.list_entries(&[[5; 32]]).unwrap(), vec![entry(5, 2, 0), entry(5, 3, 0)], "only the committed batch's entry");
}

/// Writers appending to one list at once all succeed: entries carry no expectation.
fn list_entries_never_conflict(s: &dyn Store) {
    std::thread::scope(|sc| {
        for t in 0..8u8 {
            sc.spawn(move || {
                for i in 0..16u8 {
                    s.commit(&entries_only(vec![entry(7, t * 16 + i, t)])).unwrap();
                }
            });
        }
    });
    assert_eq!(s.list_entries(&[[7; 32]]).unwrap().len(), 128);
}
