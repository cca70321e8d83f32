use super::*;

const MINIMAL: &str = TEST_MINIMAL;

#[test]
fn minimal_config_gets_defaults() {
    let c = from_toml(MINIMAL).unwrap();
    assert_eq!(c.settings.kafka.topics, vec!["user-deleted"]);
    assert_eq!(c.batch_capacity.get(), 100);
    assert_eq!(c.regions[0].endpoint, "https://api.clevertap.com");
    assert_eq!(c.settings.api.max_concurrency, 10);
    assert!(c.settings.dedup.recent_capacity >= 100_000);
}

fn err_key(text: &str) -> String {
    from_toml(text).unwrap_err().key
}

#[test]
fn errors_name_the_key() {
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[batch]\nmax_ids = 101")),
        "batch.max_ids"
    );
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[batch]\nmax_ids = 0")),
        "batch.max_ids"
    );
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[api]\nmax_concurrency = 16")),
        "api.max_concurrency"
    );
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[event]\ndefault_region = \"us1\"")),
        "event.default_region"
    );
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[server]\nlisten = \"nope\"")),
        "server.listen"
    );
    assert_eq!(
        err_key("[regions.eu1]\naccount_id = \"A\""),
        "regions.eu1.passcode"
    );
    assert_eq!(
        err_key("[regions.xx9]\naccount_id = \"A\"\npasscode = \"p\""),
        "regions.xx9.endpoint"
    );
    assert_eq!(err_key(""), "regions");
    assert_eq!(
        err_key(&format!(
            "{MINIMAL}\n[kafka.properties]\n\"enable.auto.commit\" = \"true\""
        )),
        "kafka.properties.enable.auto.commit"
    );
    let e = from_toml(&format!("{MINIMAL}\n[batch]\nmax_ids = \"many\"")).unwrap_err();
    assert!(e.to_string().contains("max_ids"), "{e}");
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[kafka]\ngroup_instance_id = \" \"")),
        "kafka.group_instance_id"
    );
    assert_eq!(
        err_key(&format!(
            "{MINIMAL}\n[kafka]\ngroup_instance_id = \"pod-0\"\n\
             [kafka.properties]\n\"group.instance.id\" = \"pod-1\""
        )),
        "kafka.group_instance_id"
    );
}

#[test]
fn audit_settings() {
    assert!(from_toml(MINIMAL).unwrap().audit.is_none());
    let plain = from_toml(&format!("{MINIMAL}\n[kafka]\naudit_topic = \"audit\"")).unwrap();
    assert!(matches!(plain.audit, Some((ref t, IdDisclosure::Plain)) if t == "audit"));
    assert_eq!(
        err_key(&format!(
            "{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true"
        )),
        "audit.salt"
    );
    assert_eq!(
        err_key(&format!(
            "{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true\nsalt = \"short\""
        )),
        "audit.salt"
    );
    let hashed = from_toml(&format!(
        "{MINIMAL}\n[kafka]\naudit_topic = \"a\"\n[audit]\nhash_ids = true\nsalt = \"0123456789abcdef0123\""
    ))
    .unwrap();
    assert!(matches!(
        hashed.audit,
        Some((_, IdDisclosure::SaltedSha256(_)))
    ));
    assert_eq!(
        err_key(&format!(
            "{MINIMAL}\n[kafka]\naudit_topic = \"user-deleted\""
        )),
        "kafka.audit_topic"
    );
}

#[test]
fn unknown_keys_are_refused() {
    let e = from_toml(&format!("{MINIMAL}\n[batch]\nmax_idz = 5")).unwrap_err();
    assert!(e.to_string().contains("max_idz"), "{e}");
}

#[test]
fn plain_http_only_for_loopback() {
    let base = "[regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\n";
    assert!(from_toml(&format!("{base}endpoint = \"http://127.0.0.1:8080\"")).is_ok());
    assert!(from_toml(&format!("{base}endpoint = \"http://localhost:8080/\"")).is_ok());
    assert_eq!(
        err_key(&format!("{base}endpoint = \"http://api.example.com\"")),
        "regions.eu1.endpoint"
    );
    assert!(from_toml(&format!(
        "{base}endpoint = \"http://api.example.com\"\nallow_insecure_endpoint = true"
    ))
    .is_ok());
}

#[test]
fn passcode_from_file_and_redaction() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pass");
    std::fs::write(&file, "from-file-secret\n").unwrap();
    let text = format!(
        "[regions.in1]\naccount_id = \"A\"\npasscode_file = \"{}\"\n[kafka.properties]\n\"sasl.password\" = \"kafka-secret\"\n\"security.protocol\" = \"SASL_SSL\"\n",
        file.display()
    );
    let c = from_toml(&text).unwrap();
    assert_eq!(c.regions[0].passcode.expose(), "from-file-secret");
    assert_eq!(c.regions[0].endpoint, "https://in1.api.clevertap.com");
    let mut s = c.settings.clone();
    s.regions.get_mut("in1").unwrap().passcode = Some(Secret::new("inline-secret"));
    let shown = redacted_toml(&s);
    assert!(!shown.contains("kafka-secret"), "{shown}");
    assert!(!shown.contains("inline-secret"), "{shown}");
    assert!(shown.contains("SASL_SSL"));
}

fn write_secret(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    #[cfg(not(unix))]
    let _ = mode;
    path
}

fn settings(text: &str) -> Settings {
    sources::settings_from(sources::parse_file(text).unwrap(), &[]).unwrap()
}

#[test]
fn kafka_secrets_from_files_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "kafka-pw", "  file-kafka-pw-91\n", 0o600);
    let text = format!(
        "{MINIMAL}\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"ssl.key.password\" = \"inline-key-pw\"\n\
         [kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n",
        pw.display()
    );
    let env = |name: &str| match name {
        "CLEVERTAP_DELETER_KAFKA_SASL_USERNAME" => Some("svc-user".to_string()),
        "CLEVERTAP_DELETER_KAFKA_SSL_KEY_PASSWORD" => Some(" env-key-pw-33 ".to_string()),
        _ => None,
    };
    let c = validate_with_env(settings(&text), &env).unwrap();
    let p = &c.settings.kafka.properties;
    assert_eq!(p["sasl.password"], "file-kafka-pw-91");
    assert_eq!(p["sasl.username"], "svc-user");
    // The environment wins over [kafka.properties], as everywhere.
    assert_eq!(p["ssl.key.password"], "env-key-pw-33");
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // Never shown: not by check-config, not by Debug.
    for shown in [
        redacted_toml(&c.settings),
        format!("{:?}", c.settings),
        format!("{c:?}"),
    ] {
        for secret in [
            "file-kafka-pw-91",
            "env-key-pw-33",
            "svc-user",
            "inline-key-pw",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }
    assert!(redacted_toml(&c.settings).contains(&pw.display().to_string()));
}

#[test]
fn kafka_secret_conflicts_and_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write_secret(dir.path(), "kafka-pw", "pw", 0o600);
    let files = format!(
        "[kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n",
        pw.display()
    );
    let no_env = |_: &str| None;
    let err = |text: &str, env: &dyn Fn(&str) -> Option<String>| {
        validate_with_env(settings(text), env).unwrap_err()
    };
    // Set twice.
    let e = err(
        &format!("{MINIMAL}\n{files}[kafka.properties]\n\"sasl.password\" = \"x\"\n"),
        &no_env,
    );
    assert_eq!(e.key, "kafka.secret_properties_files.sasl.password");
    let e = err(&format!("{MINIMAL}\n{files}"), &|n: &str| {
        (n == "CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD").then(|| "y".to_string())
    });
    assert_eq!(e.key, "kafka.secret_properties_files.sasl.password");
    assert!(
        e.message.contains("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD"),
        "{e}"
    );
    // Missing or empty file, empty variable, managed property.
    let e = err(
        &format!(
            "{MINIMAL}\n[kafka.secret_properties_files]\n\"sasl.password\" = \"/no/such/file\"\n"
        ),
        &no_env,
    );
    assert_eq!(e.key, "kafka.secret_properties_files.sasl.password");
    let empty = write_secret(dir.path(), "empty", " \n", 0o600);
    let e = err(
        &format!(
            "{MINIMAL}\n[kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n",
            empty.display()
        ),
        &no_env,
    );
    assert!(e.message.contains("empty"), "{e}");
    let e = err(MINIMAL, &|n: &str| {
        (n == "CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD").then(String::new)
    });
    assert_eq!(e.key, "CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD");
    let e = err(
        &format!(
            "{MINIMAL}\n[kafka.secret_properties_files]\n\"group.id\" = \"{}\"\n",
            pw.display()
        ),
        &no_env,
    );
    assert_eq!(e.key, "kafka.secret_properties_files.group.id");
}

#[cfg(unix)]
#[test]
fn secret_files_readable_by_others_warn() {
    let dir = tempfile::tempdir().unwrap();
    let loose = write_secret(dir.path(), "loose", "pass-loose-1", 0o644);
    let group = write_secret(dir.path(), "group", "kafka-pw-2", 0o640);
    let tight = write_secret(dir.path(), "tight", "salt-salt-salt-salt-3", 0o400);
    let text = format!(
        "[regions.eu1]\naccount_id = \"A\"\npasscode_file = \"{}\"\n\
         [kafka]\naudit_topic = \"audit\"\n[audit]\nhash_ids = true\nsalt_file = \"{}\"\n\
         [kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n",
        loose.display(),
        tight.display(),
        group.display()
    );
    let c = from_toml(&text).unwrap();
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    assert!(c
        .warnings
        .iter()
        .any(|w| w.starts_with("regions.eu1.passcode_file")
            && w.contains("0644")
            && w.contains(&loose.display().to_string())));
    assert!(c.warnings.iter().any(|w| w
        .starts_with("kafka.secret_properties_files.sasl.password")
        && w.contains("0640")));
    for w in &c.warnings {
        for secret in ["pass-loose-1", "kafka-pw-2", "salt-salt-salt-salt-3"] {
            assert!(!w.contains(secret), "{w}");
        }
    }
}

#[test]
fn endpoint_urls_carry_no_credentials() {
    let base = "[regions.eu1]\naccount_id = \"A\"\npasscode = \"p\"\n";
    for endpoint in [
        "https://user:hunter2@api.clevertap.com",
        "https://user@api.clevertap.com",
        "https://api.clevertap.com/?passcode=hunter2",
        "https://api.clevertap.com/#x",
        "ftp://api.clevertap.com",
        "not a url",
    ] {
        let e = from_toml(&format!("{base}endpoint = \"{endpoint}\"")).unwrap_err();
        assert_eq!(e.key, "regions.eu1.endpoint", "{endpoint}: {e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}

#[test]
fn ca_file_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        err_key(&format!("{MINIMAL}\n[api]\nca_file = \"/no/such/ca.pem\"")),
        "api.ca_file"
    );
    let junk = write_secret(dir.path(), "junk.pem", "not a certificate", 0o644);
    let e = from_toml(&format!(
        "{MINIMAL}\n[api]\nca_file = \"{}\"",
        junk.display()
    ))
    .unwrap_err();
    assert_eq!(e.key, "api.ca_file", "{e}");
    let bad = write_secret(
        dir.path(),
        "bad.pem",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        0o644,
    );
    let e = from_toml(&format!(
        "{MINIMAL}\n[api]\nca_file = \"{}\"",
        bad.display()
    ))
    .unwrap_err();
    assert_eq!(e.key, "api.ca_file", "{e}");
    assert!(from_toml(MINIMAL).unwrap().extra_roots.is_empty());
}

#[test]
fn event_format_and_header_fields() {
    let event = |body: &str| format!("{MINIMAL}\n[event]\n{body}");
    let c = from_toml(&event(
        "format = \"cloudevents\"\nregion_header = \"tenant-region\"\nguid_header = \"ce_subject\"",
    ))
    .unwrap();
    assert_eq!(c.settings.event.format, EventFormat::CloudEvents);
    assert_eq!(
        c.settings.event.region_header.as_deref(),
        Some("tenant-region")
    );
    // Ids by header only: no pointer is needed.
    from_toml(&event(
        "identity_pointer = \"\"\nguid_pointer = \"\"\nidentity_header = \"user-id\"",
    ))
    .unwrap();
    for (body, key) in [
        ("format = \"xml\"", "event.format"),
        (
            "format = \"cloudevents\"\ntype_header = \"t\"",
            "event.type_header",
        ),
        (
            "format = \"cloudevents\"\ntype_pointer = \"/kind\"",
            "event.type_pointer",
        ),
        (
            "format = \"cloudevents\"\nregion_header = \"ce_type\"",
            "event.region_header",
        ),
        ("region_header = \" r \"", "event.region_header"),
        (
            "identity_header = \"h\"\nguid_header = \"h\"",
            "event.guid_header",
        ),
        (
            "format = \"cloudevents\"\naccept_types = []",
            "event.accept_types",
        ),
    ] {
        let got = from_toml(&event(body)).map(|_| ()).map_err(|e| e.key);
        assert_eq!(got, Err(key.to_string()), "{body}");
    }
}

#[test]
fn account_concurrency_and_the_secret_files_watched() {
    let c = from_toml(MINIMAL).unwrap();
    assert_eq!(
        c.account_budgets(),
        vec![(RegionName::new("eu1"), DEFAULT_ACCOUNT_CONCURRENCY)]
    );
    assert_eq!(c.settings.secrets.reload_interval_ms, 5_000);
    assert!(
        c.secret_files().is_empty(),
        "an inline passcode is not watched"
    );
    assert_eq!(
        err_key(&format!("{MINIMAL}\naccount_concurrency = 0")),
        "regions.eu1.account_concurrency"
    );
    let c = from_toml(&format!("{MINIMAL}\naccount_concurrency = 20")).unwrap();
    assert!(
        c.warnings
            .iter()
            .any(|w| w.starts_with("regions.eu1.account_concurrency = 20")),
        "{:?}",
        c.warnings
    );

    let c = from_toml_and_env(
        MINIMAL,
        &[
            ("CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_CONCURRENCY", "6"),
            ("CLEVERTAP_DELETER__SECRETS__RELOAD_INTERVAL_MS", "250"),
        ],
    )
    .unwrap();
    assert_eq!(c.account_budgets(), vec![(RegionName::new("eu1"), 6)]);
    assert_eq!(c.settings.secrets.reload_interval_ms, 250);

    let dir = tempfile::tempdir().unwrap();
    let pass = write_secret(dir.path(), "pass", "pass-from-file-1", 0o600);
    let salt = write_secret(dir.path(), "salt", "salt-salt-salt-salt-2", 0o600);
    let kafka = write_secret(dir.path(), "kafka", "kafka-pw-3", 0o600);
    let c = from_toml(&format!(
        "[regions.EU1]\naccount_id = \"A\"\npasscode_file = \"{}\"\n\
         [kafka]\naudit_topic = \"audit\"\n[audit]\nhash_ids = true\nsalt_file = \"{}\"\n\
         [kafka.secret_properties_files]\n\"sasl.password\" = \"{}\"\n\
         [secrets]\nreload_interval_ms = 0\n",
        pass.display(),
        salt.display(),
        kafka.display()
    ))
    .unwrap();
    assert_eq!(c.settings.secrets.reload_interval_ms, 0);
    let files: Vec<(String, SecretTarget, String)> = c
        .secret_files()
        .into_iter()
        .map(|(f, v)| (f.key, f.target, v.expose().to_string()))
        .collect();
    assert_eq!(
        files,
        vec![
            (
                "regions.eu1.passcode_file".to_string(),
                SecretTarget::RegionPasscode(RegionName::new("eu1")),
                "pass-from-file-1".to_string()
            ),
            (
                "audit.salt_file".to_string(),
                SecretTarget::AuditSalt,
                "salt-salt-salt-salt-2".to_string()
            ),
            (
                "kafka.secret_properties_files.sasl.password".to_string(),
                SecretTarget::KafkaProperty("sasl.password".into()),
                "kafka-pw-3".to_string()
            ),
        ]
    );
}
