//! A reloaded configuration reaching a shard (`DeliveryCore::reconfigure`):
//! apps come and go for new Hellos while open sessions keep going, and
//! timeouts change for what happens next.

use super::*;

fn reconfigure(h: &mut Harness, config: &Config) {
    let auth = Arc::new(DeviceAuth::new(config, T0_UNIX_MS));
    h.core.reconfigure(config, auth);
}

#[test]
fn added_apps_are_welcome_and_removed_ones_keep_their_sessions() {
    let mut h = Harness::new();
    let (conn, welcome) = h.device("");
    let unknown = h.connect();
    h.hello(unknown, "news", "");
    assert_eq!(error_code(&h.output(unknown)), Some(ErrorCode::UnknownApp as u32));

    let mut next = config();
    next.apps.retain(|a| a.app_id != "demo");
    next.apps.push(App {
        allow_unsigned: true,
        ..App::new("news", "default")
    });
    next.delivery.heartbeat_secs = 45;
    reconfigure(&mut h, &next);

    let news = h.connect();
    h.hello(news, "news", "");
    match h.output(news).first() {
        Some(Frame::Welcome(w)) => assert_eq!(w.heartbeat_secs, 45),
        other => panic!("expected Welcome, got {other:?}"),
    }
    // The demo device connected before the reload still gets its pushes.
    let (id, _) = h.push(&welcome.token, "kept", 60);
    h.commit();
    let pushes: Vec<u64> = h
        .output(conn)
        .into_iter()
        .filter_map(|f| match f {
            Frame::Push(p) => Some(p.id),
            _ => None,
        })
        .collect();
    assert_eq!(pushes, [id]);
    // Its next connection is refused: demo is no longer configured.
    let again = h.connect();
    h.hello(again, "demo", &welcome.token);
    assert_eq!(error_code(&h.output(again)), Some(ErrorCode::UnknownApp as u32));
}

#[test]
fn device_auth_applies_to_the_next_hello() {
    let mut h = Harness::new();
    let (_, welcome) = h.device("");
    let mut next = config();
    let demo = next.apps.iter_mut().find(|a| a.app_id == "demo").unwrap();
    demo.device_secret = Some(crate::config::Secret::new("demo-device-secret-0123"));
    demo.device_auth = crate::config::DeviceAuthMode::Required;
    reconfigure(&mut h, &next);
    let conn = h.connect();
    h.hello(conn, "demo", &welcome.token);
    assert_eq!(error_code(&h.output(conn)), Some(ErrorCode::AuthFailed as u32));
}
