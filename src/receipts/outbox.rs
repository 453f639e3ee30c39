//! The receipts a stopping daemon could not deliver within
//! `receipts.shutdown_grace_ms`, kept for the next start in one framed file
//! (`DATA_DIR/receipts.pending`: CRC header, JSON body, replaced whole by
//! temp file, fsync, rename). Only an orderly stop writes it; a crash loses
//! what was queued in memory (docs/api.md, "Receipts").

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::Receipt;

const FILE_NAME: &str = "receipts.pending";
const FILE_MAGIC: &str = "ringpush-receipts";
const FILE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    app: String,
    msg_key: String,
    token: String,
    platform: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(default)]
    task_id: u64,
    acked_at_ms: u64,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The receipts the last orderly stop left; none when there is no file.
/// Call with the data directory's LOCK held.
pub fn load(data_dir: &Path) -> anyhow::Result<Vec<Receipt>> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let json = crate::framed_file::unframe(&bytes, FILE_MAGIC, FILE_VERSION).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}; delete it to start without those receipts",
            path.display()
        )
    })?;
    let stored: Vec<Stored> =
        serde_json::from_slice(json).with_context(|| format!("{}: not a receipt list", path.display()))?;
    Ok(stored
        .into_iter()
        .map(|s| Receipt {
            app: s.app.into(),
            msg_key: s.msg_key.into(),
            token: s.token.into(),
            platform: s.platform,
            user: s.user.map(Into::into),
            task_id: s.task_id,
            acked_at_ms: s.acked_at_ms,
        })
        .collect())
}

/// Replaces the file with `receipts`; removes it when there are none.
pub fn save(data_dir: &Path, receipts: &[Receipt]) -> anyhow::Result<()> {
    let path = path(data_dir);
    if receipts.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let stored: Vec<Stored> = receipts
        .iter()
        .map(|r| Stored {
            app: r.app.to_string(),
            msg_key: r.msg_key.to_string(),
            token: r.token.to_string(),
            platform: r.platform,
            user: r.user.as_ref().map(|u| u.to_string()),
            task_id: r.task_id,
            acked_at_ms: r.acked_at_ms,
        })
        .collect();
    let json = serde_json::to_vec(&stored).expect("strings and numbers serialize");
    let bytes = crate::framed_file::frame(FILE_MAGIC, FILE_VERSION, &json);
    crate::framed_file::replace(data_dir, &path, &bytes, true)
        .map_err(|e| anyhow::anyhow!("writing {}: {}", e.path.display(), e.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_receipts_come_back_and_an_empty_save_removes_the_file() {
        let dir = std::env::temp_dir().join(format!("ringpush-outbox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty(), "no file: nothing owed");
        let receipts = vec![
            Receipt {
                app: "shop".into(),
                msg_key: "k\"1".into(),
                token: "tok".into(),
                platform: 1,
                user: None,
                task_id: 0,
                acked_at_ms: 1_700_000_000_000,
            },
            Receipt {
                app: "shop".into(),
                msg_key: "k2".into(),
                token: "tok2".into(),
                platform: 7,
                user: Some("alice".into()),
                task_id: 9,
                acked_at_ms: 1_700_000_000_001,
            },
        ];
        save(&dir, &receipts).unwrap();
        assert_eq!(load(&dir).unwrap(), receipts);
        let mut bytes = std::fs::read(path(&dir)).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 1;
        std::fs::write(path(&dir), &bytes).unwrap();
        let err = load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("receipts.pending") && err.contains("checksum"),
            "{err}"
        );
        save(&dir, &[]).unwrap();
        assert!(!path(&dir).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
