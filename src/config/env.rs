//! Environment overrides of the configuration file: `RINGPUSH_<TABLE>__<KEY>`
//! sets `[table] key`, `RINGPUSH_<KEY>` a top-level key (`RINGPUSH_SHARDS`,
//! `RINGPUSH_IO`, `RINGPUSH_PIN_SHARDS`; `RINGPUSH_LOG_FORMAT` is short for
//! `RINGPUSH_LOG__FORMAT`). Owns the name mapping and parsing
//! values with the key's type; `Config::load` applies them between reading
//! the file and validating, so start-up, SIGHUP and `check-config` see the
//! same effective configuration. `[[apps]]` come from the file only.

use super::{Config, ConfigError};

pub const PREFIX: &str = "RINGPUSH_";

/// `RINGPUSH_*` variables that are not configuration keys: the tests',
/// benchmarks' and fault injection's own. Anything else starting with a
/// configuration key's name must map to one.
const NOT_CONFIG: &[&str] = &["FAULT_DIR", "BIN"];
/// Shorter names kept for keys operators set often.
const ALIASES: &[(&str, [&str; 2])] = &[("LOG_FORMAT", ["log", "format"])];
const NOT_CONFIG_PREFIXES: &[&str] = &["BENCH_", "TEST_", "TORTURE_"];

/// The keys outside any table.
const TOP_LEVEL_SCALARS: &[&str] = &["shards", "io", "pin_shards"];

/// The first path segment of every configuration key, for telling a
/// mistyped override (`RINGPUSH_DELIVERY_MAX_TTL_SECS`, one underscore) from
/// an unrelated variable.
const TOP_LEVEL: &[&str] = &[
    "listen",
    "shards",
    "io",
    "pin_shards",
    "limits",
    "admission",
    "delivery",
    "durability",
    "stats",
    "receipts",
    "device_auth",
    "http",
    "tls",
    "log",
    "apps",
];

/// The configuration path a variable names (`["delivery", "max_ttl_secs"]`),
/// `Ok(None)` for a variable that is not about configuration, `Err` for one
/// that looks like an override but cannot be one.
pub fn key_path(name: &str) -> Result<Option<Vec<String>>, String> {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    if NOT_CONFIG.contains(&rest) || NOT_CONFIG_PREFIXES.iter().any(|p| rest.starts_with(p)) {
        return Ok(None);
    }
    if let Some((_, path)) = ALIASES.iter().find(|(alias, _)| *alias == rest) {
        return Ok(Some(path.iter().map(|k| k.to_string()).collect()));
    }
    let lower = rest.to_ascii_lowercase();
    let looks_like_config = TOP_LEVEL
        .iter()
        .any(|top| lower == *top || lower.starts_with(&format!("{top}_")));
    if !looks_like_config {
        return Ok(None);
    }
    let path: Vec<String> = lower.split("__").map(str::to_string).collect();
    if let [single] = path.as_slice() {
        if !TOP_LEVEL_SCALARS.contains(&single.as_str()) {
            let table = TOP_LEVEL
                .iter()
                .find(|t| single.starts_with(&format!("{t}_")))
                .unwrap_or(&"table");
            return Err(format!(
                "{name}: not a configuration key; a key in a table takes two underscores after the \
                 table's name: {PREFIX}{}__{}",
                table.to_ascii_uppercase(),
                rest.get(table.len() + 1..).unwrap_or("KEY")
            ));
        }
    }
    if path.iter().any(String::is_empty) || path.len() > 2 {
        return Err(format!(
            "{name}: not a configuration key (use RINGPUSH_<TABLE>__<KEY>, e.g. \
             RINGPUSH_DELIVERY__MAX_TTL_SECS, or RINGPUSH_<KEY> for a top-level key)"
        ));
    }
    if path[0] == "apps" {
        return Err(format!(
            "{name}: [[apps]] can only be set in the configuration file"
        ));
    }
    Ok(Some(path))
}

/// The value of a variable as TOML: `5`, `true`, `["a", "b"]` parse as
/// such; anything that is not a TOML value (`127.0.0.1:7070`, `./data`) is
/// a string.
fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [key] => {
            table.insert(key.clone(), value);
            Ok(())
        }
        [section, rest @ ..] => {
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => set(inner, rest, value),
                _ => Err(format!("{section} is not a table")),
            }
        }
        [] => Err("empty key".into()),
    }
}

/// Applies every override among `vars` to the file's `table`. Each is
/// checked on its own against the configuration's types first, so an error
/// names the variable: an unknown key, or a value of the wrong type.
pub fn apply(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>, ConfigError> {
    let mut applied = Vec::new();
    let mut vars: Vec<(String, String)> = vars.into_iter().collect();
    // Deterministic order, so the first error reported is always the same.
    vars.sort();
    for (name, raw) in vars {
        let Some(path) = key_path(&name).map_err(ConfigError::Env)? else {
            continue;
        };
        let value = typed_value(&path, &raw).map_err(|e| ConfigError::Env(format!("{name}={raw:?}: {e}")))?;
        set(table, &path, value).map_err(|e| ConfigError::Env(format!("{name}: {e}")))?;
        applied.push(name);
    }
    Ok(applied)
}

/// The variable's value parsed as TOML if the key takes that type, else
/// as a string if it takes that; the error of the first try otherwise.
fn typed_value(path: &[String], raw: &str) -> Result<toml::Value, String> {
    let fits = |value: &toml::Value| -> Result<(), String> {
        let mut alone = toml::Table::new();
        set(&mut alone, path, value.clone())?;
        toml::Value::Table(alone)
            .try_into::<Config>()
            .map(|_| ())
            .map_err(|e| e.to_string().trim().replace('\n', " "))
    };
    let parsed = parse_value(raw);
    let first = match fits(&parsed) {
        Ok(()) => return Ok(parsed),
        Err(e) => e,
    };
    let string = toml::Value::String(raw.to_string());
    if !matches!(parsed, toml::Value::String(_)) && fits(&string).is_ok() {
        return Ok(string);
    }
    Err(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(text: &str, pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_and_env(text, vars(pairs))
    }

    #[test]
    fn names_map_to_keys() {
        let path = |name: &str| key_path(name).unwrap();
        assert_eq!(path("RINGPUSH_SHARDS"), Some(vec!["shards".to_string()]));
        assert_eq!(path("RINGPUSH_PIN_SHARDS"), Some(vec!["pin_shards".to_string()]));
        assert_eq!(
            path("RINGPUSH_DELIVERY__MAX_TTL_SECS"),
            Some(vec!["delivery".to_string(), "max_ttl_secs".to_string()])
        );
        assert_eq!(
            path("RINGPUSH_LOG_FORMAT"),
            Some(vec!["log".to_string(), "format".to_string()])
        );
        for unrelated in [
            "RINGPUSH_FAULT_DIR",
            "RINGPUSH_BIN",
            "RINGPUSH_TEST_LOG",
            "RINGPUSH_BENCH_APP_SECRET",
            "RINGPUSH_TORTURE_TRIALS",
            "RINGPUSH_SOMETHING_ELSE",
            "HOME",
        ] {
            assert_eq!(path(unrelated), None, "{unrelated}");
        }
        for bad in [
            "RINGPUSH_LISTEN__",
            "RINGPUSH_DELIVERY__A__B",
            "RINGPUSH_APPS__0__APPID",
        ] {
            assert!(key_path(bad).unwrap_err().contains(bad), "{bad}");
        }
    }

    #[test]
    fn overrides_take_the_key_type() {
        let config = load(
            "[delivery]\nmax_ttl_secs = 100\n",
            &[
                ("RINGPUSH_DELIVERY__MAX_TTL_SECS", "3600"),
                ("RINGPUSH_LISTEN__DEVICE", "127.0.0.1:7070"),
                ("RINGPUSH_SHARDS", "3"),
                ("RINGPUSH_IO", "epoll"),
                ("RINGPUSH_PIN_SHARDS", "false"),
                ("RINGPUSH_DURABILITY__DATA_DIR", "/var/lib/ringpush"),
                ("RINGPUSH_ADMISSION__EXEMPT", "[\"10.0.0.0/8\"]"),
                ("RINGPUSH_LOG__FORMAT", "json"),
                ("RINGPUSH_FAULT_DIR", "/ignored"),
            ],
        )
        .unwrap();
        assert_eq!(config.delivery.max_ttl_secs, 3600);
        assert_eq!(config.listen.device, "127.0.0.1:7070".parse().unwrap());
        assert_eq!(config.shards, 3);
        assert_eq!(config.io, crate::config::IoBackend::Epoll);
        assert!(!config.pin_shards);
        assert_eq!(
            config.durability.data_dir,
            std::path::Path::new("/var/lib/ringpush")
        );
        assert_eq!(config.admission.exempt, ["10.0.0.0/8"]);
        assert_eq!(config.log.format, crate::config::LogFormat::Json);
        // A number where a string is wanted is taken as the string.
        let numeric_dir = load("", &[("RINGPUSH_DURABILITY__DATA_DIR", "2024")]).unwrap();
        assert_eq!(numeric_dir.durability.data_dir, std::path::Path::new("2024"));
    }

    #[test]
    fn bad_overrides_are_named() {
        let err = |pairs: &[(&str, &str)]| load("", pairs).unwrap_err().to_string();
        let unknown = err(&[("RINGPUSH_DELIVERY__HEARTBEAT", "5")]);
        assert!(
            unknown.contains("RINGPUSH_DELIVERY__HEARTBEAT") && unknown.contains("heartbeat"),
            "{unknown}"
        );
        let typo = err(&[("RINGPUSH_DELIVERY_MAX_TTL_SECS", "5")]);
        assert!(
            typo.contains("RINGPUSH_DELIVERY_MAX_TTL_SECS")
                && typo.contains("RINGPUSH_DELIVERY__MAX_TTL_SECS"),
            "{typo}"
        );
        let wrong_type = err(&[("RINGPUSH_SHARDS", "many")]);
        assert!(wrong_type.contains("RINGPUSH_SHARDS"), "{wrong_type}");
        let format = err(&[("RINGPUSH_LOG_FORMAT", "xml")]);
        assert!(format.contains("RINGPUSH_LOG_FORMAT"), "{format}");
        let unknown_table = err(&[("RINGPUSH_LIMITS__NOPE", "1")]);
        assert!(unknown_table.contains("nope"), "{unknown_table}");
        // Validation runs after the overrides.
        let invalid = err(&[("RINGPUSH_DELIVERY__MIN_TTL_SECS", "0")]);
        assert!(invalid.contains("min_ttl_secs"), "{invalid}");
    }
}
