//! The service files agree with each other and with the daemon: the unit
//! (`systemd/ringpush.service`), the user (`systemd/ringpush.sysusers`), the
//! kernel settings (`systemd/99-ringpush.conf`), the limits for runs outside
//! systemd (`systemd/limits.conf`), the packaged configuration
//! (`packaging/ringpush.toml`) and the Debian package's metadata
//! (`[package.metadata.deb]` in Cargo.toml). `systemd-analyze verify` of
//! the unit runs in `.ci/run`; the package itself is built by `cargo deb`.

use std::path::{Path, PathBuf};

use ringpush::config::Config;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The values of `key=` in the unit, in order.
fn unit_values(key: &str) -> Vec<String> {
    read("systemd/ringpush.service")
        .lines()
        .filter_map(|line| line.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

fn unit_value(key: &str) -> String {
    let values = unit_values(key);
    assert_eq!(values.len(), 1, "{key}= in the unit: {values:?}");
    values[0].clone()
}

/// `key = value` lines of the sysctl file; a leading `-` (ignore failure)
/// is kept on the key.
fn sysctls() -> Vec<(String, String)> {
    read("systemd/99-ringpush.conf")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key = value");
            (
                key.trim().to_string(),
                value.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect()
}

fn sysctl(key: &str) -> String {
    sysctls()
        .into_iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key} in 99-ringpush.conf"))
        .1
}

#[test]
fn the_unit_is_a_notify_service_with_the_hardening_asked_for() {
    assert_eq!(unit_value("Type"), "notify");
    assert_eq!(unit_value("NotifyAccess"), "main");
    assert_eq!(unit_value("WatchdogSec"), "30");
    assert_eq!(
        unit_value("ExecStart"),
        "/usr/bin/ringpush --config /etc/ringpush/ringpush.toml"
    );
    assert_eq!(unit_value("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(unit_value("StateDirectory"), "ringpush");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(unit_value(key), value, "{key}");
    }
    let families = unit_value("RestrictAddressFamilies");
    for family in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(
            families.split_whitespace().any(|f| f == family),
            "{family}: {families}"
        );
    }
    let allowed = &unit_values("SystemCallFilter")[0];
    for call in [
        "@system-service",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
    ] {
        assert!(allowed.split_whitespace().any(|c| c == call), "{call}: {allowed}");
    }
}

#[test]
fn the_user_is_the_same_everywhere() {
    let user = unit_value("User");
    assert_eq!(unit_value("Group"), user);
    let sysusers = read("systemd/ringpush.sysusers");
    let line = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a u line in ringpush.sysusers");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1], user, "{line}");
    assert!(line.ends_with("/var/lib/ringpush /usr/sbin/nologin"), "{line}");
    let limits = read("systemd/limits.conf");
    assert!(
        limits.lines().any(|l| l.starts_with(&format!("{user} "))),
        "limits.conf names {user}"
    );
    let postinst = read("packaging/debian/postinst");
    assert!(
        postinst.contains("#DEBHELPER#"),
        "cargo-deb inserts its fragments there"
    );
    assert!(postinst.contains(&format!("--gecos \"ringpush push gateway\" {user}")));
}

#[test]
fn file_limits_fit_a_million_connections() {
    let nofile: u64 = unit_value("LimitNOFILE").parse().unwrap();
    assert!(nofile > 1_000_000, "{nofile}");
    for line in read("systemd/limits.conf")
        .lines()
        .filter(|l| l.contains("nofile"))
    {
        let value: u64 = line.split_whitespace().last().unwrap().parse().unwrap();
        assert_eq!(value, nofile, "limits.conf and the unit agree: {line}");
    }
    // RLIMIT_NOFILE cannot exceed fs.nr_open.
    let nr_open: u64 = sysctl("fs.nr_open").parse().unwrap();
    assert!(nr_open >= nofile);
    let file_max: u64 = sysctl("fs.file-max").parse().unwrap();
    assert!(file_max > nofile);
    // The default per-shard listen backlog must be allowed by somaxconn.
    let somaxconn: u32 = sysctl("net.core.somaxconn").parse().unwrap();
    assert!(somaxconn >= Config::default().listen.backlog);
}

#[test]
fn every_sysctl_exists_on_this_kernel() {
    for (key, _) in sysctls() {
        // A leading '-' marks keys that exist only with a module loaded.
        if key.starts_with('-') {
            continue;
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        assert!(path.exists(), "{key}: no {}", path.display());
    }
}

#[test]
fn the_packaged_config_runs_under_the_unit() {
    let config = Config::load(&repo("packaging/ringpush.toml")).expect("packaging/ringpush.toml loads");
    // StateDirectory=ringpush is the only place the unit may write.
    assert_eq!(
        config.durability.data_dir,
        Path::new("/var/lib").join(unit_value("StateDirectory"))
    );
    // CapabilityBoundingSet= is empty: no port below 1024.
    let ports = [
        config.listen.device.port(),
        config.listen.device_tls.port(),
        config.listen.api.port(),
        config.listen.admin.port(),
    ];
    assert!(ports.iter().all(|&p| p >= 1024), "{ports:?}");
    // The admin endpoints and the API stay on loopback by default.
    assert!(config.listen.api.ip().is_loopback());
    assert!(config.listen.admin.ip().is_loopback());
}

#[test]
fn the_debian_package_ships_what_the_unit_uses() {
    let manifest: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .expect("assets")
        .iter()
        .map(|a| {
            let a = a.as_array().expect("[source, dest, mode]");
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let dest = |source: &str| {
        assets
            .iter()
            .find(|(s, _)| s == source)
            .unwrap_or_else(|| panic!("no asset {source}"))
            .1
            .clone()
    };
    assert_eq!(dest("target/release/ringpush"), "usr/bin/");
    assert_eq!(dest("packaging/ringpush.toml"), "etc/ringpush/ringpush.toml");
    assert!(dest("systemd/99-ringpush.conf").starts_with("usr/lib/sysctl.d/"));
    for (source, _) in &assets {
        if !source.starts_with("target/") && !source.contains('*') {
            assert!(repo(source).is_file(), "asset {source} is missing");
        }
    }
    let units = &deb["systemd-units"];
    assert_eq!(units["unit-scripts"].as_str(), Some("systemd/"));
    assert_eq!(units["enable"].as_bool(), Some(true));
    // cargo-deb finds the unit and the sysusers file by these names.
    assert!(repo("systemd/ringpush.service").is_file());
    assert!(repo("systemd/ringpush.sysusers").is_file());
    let scripts = deb["maintainer-scripts"].as_str().unwrap();
    assert!(repo(scripts).join("postinst").is_file());
}
