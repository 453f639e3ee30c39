//! Arbitrary text into the template parser and the template rules: an error
//! or a text that prints back to itself and renders with every placeholder
//! filled, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringpush::templates::text::Text;
use ringpush::templates::{validate, Draft};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(text) = Text::parse(source) {
        assert_eq!(Text::parse(&text.to_string()).as_ref(), Ok(&text));
        let rendered = text.render(|_| Some("v")).expect("every name has a value");
        let placeholders = text.placeholders().count();
        assert!(rendered.len() <= source.len() + placeholders);
        if placeholders > 0 {
            assert!(text.render(|_| None).is_err());
        }
    }
    let _ = validate(
        Draft {
            name: source.chars().take(8).collect(),
            title: source.into(),
            content: source.into(),
            uri: source.into(),
            ..Default::default()
        },
        0,
    );
});
