use super::*;

use crate::config::TEST_MINIMAL as MINIMAL;

#[test]
fn group_instance_id_reaches_the_consumer_only() {
    let c = crate::config::from_toml(&format!(
        "{MINIMAL}\n[kafka]\ngroup_instance_id = \"pod-0\""
    ))
    .unwrap();
    assert_eq!(consumer_config(&c).get("group.instance.id"), Some("pod-0"));
    assert_eq!(producer_config(&c).get("group.instance.id"), None);
    let dynamic = crate::config::from_toml(MINIMAL).unwrap();
    assert_eq!(consumer_config(&dynamic).get("group.instance.id"), None);
}
