use super::*;
use crate::config::from_toml;
use crate::domain::ids::{IdKind, RegionName};

const CONFIG: &str = r#"
    [regions.eu1]
    account_id = "ACC-EU"
    passcode = "p1"
    [regions.in1]
    account_id = "ACC-IN"
    passcode = "p2"
"#;

fn key(id: &str) -> DeletionKey {
    DeletionKey {
        region: RegionName::new("eu1"),
        kind: IdKind::Identity,
        id: id.into(),
    }
}

fn candidate(offset: i64, secs_ago: u64, ids: &[&str], now: SystemTime) -> Candidate {
    Candidate {
        position: ("t".into(), 0, offset),
        at: now - Duration::from_secs(secs_ago),
        keys: ids.iter().map(|id| key(id)).collect(),
    }
}

#[test]
fn the_fingerprint_changes_with_the_decoding_and_the_accounts_only() {
    let base = decoding_fingerprint(&from_toml(CONFIG).unwrap());
    assert_eq!(base, decoding_fingerprint(&from_toml(CONFIG).unwrap()));
    assert!(base.starts_with("clevertap-deleter/1 decoding="), "{base}");
    // Not decoding: the passcode and the batching.
    let other_passcode = CONFIG.replace("\"p1\"", "\"rotated\"");
    let batching = format!("{CONFIG}\n[batch]\nlinger_ms = 7\n");
    for same in [other_passcode, batching] {
        assert_eq!(base, decoding_fingerprint(&from_toml(&same).unwrap()));
    }
    let types = format!("{CONFIG}\n[event]\naccept_types = [\"user-deleted\", \"gone\"]\n");
    let account = CONFIG.replace("ACC-IN", "ACC-IN-2");
    let fewer_regions = "[regions.eu1]\naccount_id = \"ACC-EU\"\npasscode = \"p1\"\n";
    for other in [types.as_str(), account.as_str(), fewer_regions] {
        assert_ne!(
            base,
            decoding_fingerprint(&from_toml(other).unwrap()),
            "{other}"
        );
    }
}

#[test]
fn dead_lettered_old_and_future_events_are_not_remembered() {
    let now = SystemTime::now();
    let ttl = Duration::from_secs(3_600);
    let candidates = vec![
        candidate(1, 100, &["a", "b"], now),
        candidate(2, 50, &["c"], now),
        // Dead-lettered (an id CleverTap refused): not deleted.
        candidate(3, 40, &["d"], now),
        // Older than the ttl.
        candidate(4, 4_000, &["e"], now),
        // Dated in the future by its producer: no age to keep.
        Candidate {
            at: now + Duration::from_secs(60),
            ..candidate(5, 0, &["f"], now)
        },
        // A repeat of "a": remembered from its earliest event.
        candidate(6, 10, &["a"], now),
    ];
    let excluded: DeadLetters = [(("t".into(), 0, 3), None)].into();
    let got = remembered(candidates, &excluded, now, ttl);
    let ids: Vec<(&str, u64)> = got
        .iter()
        .map(|(k, at)| (&*k.id, now.duration_since(*at).unwrap().as_secs()))
        .collect();
    assert_eq!(&ids[2..], &[("c", 50)]);
    let mut first_two = ids[..2].to_vec();
    first_two.sort();
    assert_eq!(first_two, [("a", 100), ("b", 100)]);
}

#[test]
fn a_dead_letter_excludes_only_its_own_partition_and_offset() {
    let now = SystemTime::now();
    let candidates = vec![candidate(7, 5, &["x"], now)];
    let elsewhere: DeadLetters = [(("t".into(), 1, 7), Some(1)), (("u".into(), 0, 7), None)].into();
    let got = remembered(candidates, &elsewhere, now, Duration::from_secs(60));
    assert_eq!(got.len(), 1);
}

#[test]
fn commit_metadata_names_the_decoding_and_where_it_began() {
    let fp = "clevertap-deleter/1 decoding=00aa";
    let m = commit_metadata(fp, 42);
    assert_eq!(decoding_since(&m, fp), Some(42));
    assert_eq!(
        decoding_since(&m, "clevertap-deleter/1 decoding=00ab"),
        None
    );
    // Written without a start (or by a tool): nothing is read back.
    assert_eq!(decoding_since(fp, fp), None);
    assert_eq!(decoding_since("", fp), None);
}
