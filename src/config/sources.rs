//! Where settings come from: the TOML file, with the `CLEVERTAP_DELETER__…`
//! environment variables laid over it, then deserialized strictly.
//!
//! The file is typed TOML: `dry_run = "yes"`, `linger_ms = 2.7` or
//! `max_ids = "50"` are errors, not coerced. Environment variables are text
//! by nature, so each one is parsed as the type of the key it sets (the type
//! of the key's default value): booleans are exactly `true` or `false`,
//! integers are digits only, lists are comma separated, everything else
//! (passcodes, group ids like `0042`) is taken verbatim.
//!
//! Region names are case-insensitive: `[regions.EU1]` in the file and
//! `CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE` (whose name is lower-cased like
//! every variable's) both mean the region `eu1`.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::error::{env_key_prefix, ConfigError};
use super::kafka::is_secret_property;
use super::regions::RegionSettings;
use super::settings::Settings;

/// One `CLEVERTAP_DELETER__A__B=value` variable.
#[derive(Debug, Clone)]
pub(super) struct EnvOverride {
    pub var: String,
    /// Lower-cased key path, e.g. `["regions", "eu1", "passcode"]`.
    pub path: Vec<String>,
    pub value: String,
}

/// Parses the configuration file. Errors give the line and column, never the
/// line itself (it may hold a passcode).
pub(super) fn parse_file(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>().map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!(" at line {line}, column {column}")
            })
            .unwrap_or_default();
        ConfigError::new(
            "(file)",
            format!("not valid TOML{at}: {}", e.message().trim()),
        )
    })
}

/// The `CLEVERTAP_DELETER__…` variables among `vars`, sorted by name.
pub(super) fn env_overrides(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<EnvOverride>, ConfigError> {
    let prefix = env_key_prefix();
    let mut out = Vec::new();
    for (name, value) in vars {
        let Ok(var) = name.into_string() else {
            continue;
        };
        if var.len() < prefix.len() || !var[..prefix.len()].eq_ignore_ascii_case(&prefix) {
            continue;
        }
        let path: Vec<String> = var[prefix.len()..]
            .to_ascii_lowercase()
            .split("__")
            .map(str::to_string)
            .collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::new(
                var.clone(),
                format!("is not a key path: write {prefix}SECTION__KEY, with `__` between levels"),
            ));
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::new(var.clone(), "holds bytes that are not UTF-8"))?;
        out.push(EnvOverride { var, path, value });
    }
    out.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(out)
}

/// What an environment value is parsed as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Integer,
    List,
    Text,
    Table,
}

fn kind_of_value(value: &toml::Value) -> Kind {
    match value {
        toml::Value::Boolean(_) => Kind::Bool,
        toml::Value::Integer(_) => Kind::Integer,
        toml::Value::Array(_) => Kind::List,
        toml::Value::Table(_) => Kind::Table,
        _ => Kind::Text,
    }
}

/// The defaults as TOML: the type of each key. Keys without a default
/// (optional ones such as `kafka.audit_topic`) are text.
struct Schema {
    settings: toml::Table,
    region: toml::Table,
}

impl Schema {
    fn new() -> Self {
        Schema {
            settings: toml::Table::try_from(Settings::default()).unwrap_or_default(),
            region: toml::Table::try_from(RegionSettings::default()).unwrap_or_default(),
        }
    }

    fn kind(&self, path: &[String]) -> Kind {
        let (table, rest) = match path {
            [first, _name, rest @ ..] if first == "regions" && !rest.is_empty() => {
                (&self.region, rest)
            }
            [first, _name] if first == "regions" => return Kind::Table,
            _ => (&self.settings, path),
        };
        let mut current = table;
        for (i, key) in rest.iter().enumerate() {
            match current.get(key) {
                Some(toml::Value::Table(t)) if i + 1 < rest.len() => current = t,
                Some(value) if i + 1 == rest.len() => return kind_of_value(value),
                _ => return Kind::Text,
            }
        }
        Kind::Text
    }
}

/// The value of one variable, parsed strictly as `kind`.
fn env_value(o: &EnvOverride, kind: Kind) -> Result<toml::Value, ConfigError> {
    let key = o.path.join(".");
    let v = o.value.as_str();
    let bad =
        |what: &str| ConfigError::new(key.clone(), format!("{} = `{v}` is not {what}", o.var));
    Ok(match kind {
        Kind::Bool => match v {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            _ => return Err(bad("a boolean: write true or false")),
        },
        Kind::Integer => {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("a whole number (digits only)"));
            }
            toml::Value::Integer(v.parse().map_err(|_| bad("a whole number in range"))?)
        }
        Kind::List => toml::Value::Array(if v.trim().is_empty() {
            Vec::new()
        } else {
            v.split(',')
                .map(|item| toml::Value::String(item.trim().to_string()))
                .collect()
        }),
        Kind::Text => toml::Value::String(o.value.clone()),
        Kind::Table => {
            return Err(ConfigError::new(
                key,
                format!(
                    "{} sets a table; set its keys instead, e.g. {}__KEY",
                    o.var, o.var
                ),
            ))
        }
    })
}

/// `[regions.EU1]` becomes `regions.eu1`; two tables that differ only in
/// case are refused.
fn lower_case_regions(table: &mut toml::Table) -> Result<(), ConfigError> {
    let Some(toml::Value::Table(regions)) = table.get_mut("regions") else {
        return Ok(());
    };
    let written = std::mem::take(regions);
    for (name, value) in written {
        let lower = name.to_ascii_lowercase();
        if regions.contains_key(&lower) {
            return Err(ConfigError::new(
                format!("regions.{lower}"),
                format!(
                    "is defined twice ([regions.{name}] and another spelling); region names are case-insensitive, keep one table"
                ),
            ));
        }
        regions.insert(lower, value);
    }
    Ok(())
}

fn insert(table: &mut toml::Table, o: &EnvOverride, value: toml::Value) -> Result<(), ConfigError> {
    let (last, parents) = o.path.split_last().expect("paths are never empty");
    let mut current = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::new(
                    o.path[..=i].join("."),
                    format!("is not a table, so {} cannot set a key inside it", o.var),
                ))
            }
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

/// The file's table with the variables laid over it, deserialized.
pub(super) fn settings_from(
    mut table: toml::Table,
    overrides: &[EnvOverride],
) -> Result<Settings, ConfigError> {
    lower_case_regions(&mut table)?;
    let schema = Schema::new();
    // Dotted key -> the variable that set it.
    let mut origins: BTreeMap<String, String> = BTreeMap::new();
    for o in overrides {
        let key = o.path.join(".");
        if let Some(first) = origins.get(&key) {
            return Err(ConfigError::new(
                key,
                format!("is set twice, by {first} and by {}; keep one", o.var),
            ));
        }
        let value = env_value(o, schema.kind(&o.path))?;
        insert(&mut table, o, value)?;
        origins.insert(key, o.var.clone());
    }
    deserialize(table, &origins)
}

fn try_settings(table: &toml::Table) -> Result<Settings, String> {
    toml::Value::Table(table.clone())
        .try_into::<Settings>()
        .map_err(|e| e.message().to_string())
}

/// Every key path in the table, tables included.
fn paths(table: &toml::Table, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    for (key, value) in table {
        prefix.push(key.clone());
        out.push(prefix.clone());
        if let toml::Value::Table(t) = value {
            paths(t, prefix, out);
        }
        prefix.pop();
    }
}

fn remove(table: &mut toml::Table, path: &[String]) {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut current = table;
    for key in parents {
        match current.get_mut(key) {
            Some(toml::Value::Table(t)) => current = t,
            _ => return,
        }
    }
    current.remove(last);
}

/// Whether the key at `path` holds a secret, whose value an error must not show.
fn is_secret_path(path: &[String]) -> bool {
    match path {
        [.., last] if last == "passcode" || last == "salt" => true,
        [kafka, properties, rest @ ..] if kafka == "kafka" && properties == "properties" => {
            is_secret_property(&rest.join("."))
        }
        _ => false,
    }
}

/// `invalid type: string "x", expected y` -> `invalid type: string, expected y`.
fn without_value(message: &str) -> String {
    let Some(expected) = message.find(", expected") else {
        return "has a value of the wrong type".to_string();
    };
    let head = &message[..expected];
    let cut = head.find(['"', '`', '\'']).unwrap_or(head.len());
    format!("{}{}", head[..cut].trim_end(), &message[expected..])
}

/// The value at `path`, if it is text that reads strictly as a boolean or a
/// whole number.
fn typed_alternative(table: &toml::Table, path: &[String]) -> Option<toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut current = table;
    for key in parents {
        current = current.get(key)?.as_table()?;
    }
    let text = current.get(last)?.as_str()?;
    match text {
        "true" => Some(toml::Value::Boolean(true)),
        "false" => Some(toml::Value::Boolean(false)),
        _ if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            text.parse().ok().map(toml::Value::Integer)
        }
        _ => None,
    }
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let (last, parents) = path.split_last().expect("paths are never empty");
    let mut current = table;
    for key in parents {
        match current.get_mut(key) {
            Some(toml::Value::Table(t)) => current = t,
            _ => return,
        }
    }
    current.insert(last.clone(), value);
}

/// Deserializes; on failure finds the key at fault, the deepest one whose
/// removal changes the error (serde's errors from a TOML value carry no key).
fn deserialize(
    table: toml::Table,
    origins: &BTreeMap<String, String>,
) -> Result<Settings, ConfigError> {
    let first = match try_settings(&table) {
        Ok(settings) => return Ok(settings),
        Err(e) => e,
    };
    let mut candidates = Vec::new();
    paths(&table, &mut Vec::new(), &mut candidates);
    // Deepest first, so a wrong value is found before the table around it.
    candidates.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in candidates {
        let mut without = table.clone();
        remove(&mut without, &path);
        let cured = match try_settings(&without) {
            Ok(_) => true,
            Err(e) => e != first,
        };
        if cured {
            let key = path.join(".");
            if origins.contains_key(&key) {
                // A key without a default (an optional number or flag) got
                // the variable as text: try it as the number or flag it may be.
                if let Some(typed) = typed_alternative(&table, &path) {
                    let mut retyped = table.clone();
                    set(&mut retyped, &path, typed);
                    return deserialize(retyped, origins);
                }
            }
            let mut message = if is_secret_path(&path) {
                without_value(&first)
            } else {
                first.clone()
            };
            if let Some(var) = origins.get(&key) {
                message.push_str(&format!(" (set by {var})"));
            }
            return Err(ConfigError::new(key, message));
        }
    }
    Err(ConfigError::new("(file)", first))
}

#[cfg(test)]
mod tests {
    use super::super::error::env_var_for;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<EnvOverride> {
        env_overrides(
            pairs
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        )
        .unwrap()
    }

    #[test]
    fn variables_are_typed_by_their_key() {
        let s = settings_from(
            toml::Table::new(),
            &env(&[
                ("CLEVERTAP_DELETER__KAFKA__TOPICS", "a, b"),
                ("CLEVERTAP_DELETER__KAFKA__GROUP_ID", "0042"),
                ("CLEVERTAP_DELETER__API__DRY_RUN", "true"),
                ("CLEVERTAP_DELETER__BATCH__MAX_IDS", "50"),
                ("clevertap_deleter__regions__EU1__passcode", "7"),
                (
                    "CLEVERTAP_DELETER__REGIONS__EU1__ALLOW_INSECURE_ENDPOINT",
                    "false",
                ),
                ("OTHER", "x"),
                ("CLEVERTAP_DELETER_KAFKA_SASL_PASSWORD", "not an override"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kafka.topics, ["a", "b"]);
        assert_eq!(s.kafka.group_id, "0042");
        assert!(s.api.dry_run);
        assert_eq!(s.batch.max_ids, 50);
        assert_eq!(s.regions["eu1"].passcode.as_ref().unwrap().expose(), "7");
    }

    #[test]
    fn errors_name_key_and_variable_and_hide_secrets() {
        let err = |text: &str, pairs: &[(&str, &str)]| {
            settings_from(parse_file(text).unwrap(), &env(pairs)).unwrap_err()
        };
        let e = err("", &[("CLEVERTAP_DELETER__API__DRY_RUN", "yes")]);
        assert_eq!(e.key, "api.dry_run");
        assert!(e.message.contains("CLEVERTAP_DELETER__API__DRY_RUN"), "{e}");
        let e = err("[batch]\nlinger_ms = 2.7", &[]);
        assert_eq!(e.key, "batch.linger_ms");
        let e = err("[api]\nfoo = 1", &[]);
        assert_eq!(e.key, "api.foo");
        let e = err("[nope]\nfoo = 1", &[]);
        assert_eq!(e.key, "nope");
        let e = err("[regions.eu1]\npasscode = 123456789", &[]);
        assert_eq!(e.key, "regions.eu1.passcode");
        assert!(!e.to_string().contains("123456789"), "{e}");
        let e = err("[audit]\nsalt = [\"salt-9911\"]", &[]);
        assert!(!e.to_string().contains("salt-9911"), "{e}");
        let e = parse_file("x = \"unterminated passcode-5511\n").unwrap_err();
        assert!(!e.to_string().contains("passcode-5511"), "{e}");
        assert!(e.message.contains("line 1"), "{e}");
        let e = err(
            "[regions.Eu1]\naccount_id = \"a\"\n[regions.eU1]\naccount_id = \"b\"",
            &[],
        );
        assert_eq!(e.key, "regions.eu1");
        let e = err(
            "",
            &[
                ("CLEVERTAP_DELETER__REGIONS__EU1__PASSCODE", "a"),
                ("clevertap_deleter__regions__eu1__passcode", "b"),
            ],
        );
        assert_eq!(e.key, "regions.eu1.passcode");
        let e = err("", &[("CLEVERTAP_DELETER__KAFKA__PROPERTIES", "x")]);
        assert_eq!(e.key, "kafka.properties");
        assert_eq!(
            env_var_for("regions.eu1.account_id"),
            "CLEVERTAP_DELETER__REGIONS__EU1__ACCOUNT_ID"
        );
    }

    #[test]
    fn text_for_a_key_without_default_may_read_as_a_number_or_flag() {
        let table = parse_file("[a]\nn = \"42\"\nb = \"true\"\ns = \"0x1\"").unwrap();
        let path = |k: &str| vec!["a".to_string(), k.to_string()];
        assert_eq!(
            typed_alternative(&table, &path("n")),
            Some(toml::Value::Integer(42))
        );
        assert_eq!(
            typed_alternative(&table, &path("b")),
            Some(toml::Value::Boolean(true))
        );
        assert_eq!(typed_alternative(&table, &path("s")), None);
        // An unknown key stays an error after the retry.
        let e = settings_from(
            toml::Table::new(),
            &env(&[("CLEVERTAP_DELETER__API__NEW_NUMBER", "7")]),
        )
        .unwrap_err();
        assert_eq!(e.key, "api.new_number");
        assert!(
            e.message.contains("CLEVERTAP_DELETER__API__NEW_NUMBER"),
            "{e}"
        );
    }
}
