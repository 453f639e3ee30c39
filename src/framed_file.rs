//! Small files that must survive a crash whole: the template and tag
//! stores. A file is one header line, `MAGIC VERSION crc32=XXXXXXXX
//! bytes=N`, then N bytes of body whose CRC-32 the header holds, so damage
//! that still parses is caught too; it is replaced by temp file, fsync,
//! rename and directory fsync, so a crash at any point leaves the old file
//! or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// `body` behind its header.
pub fn frame(magic: &str, version: u32, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{magic} {version} crc32={:08x} bytes={}\n",
        crc32fast::hash(body),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// The body of a framed file, once its header, length and checksum agree;
/// otherwise why not.
pub fn unframe<'a>(bytes: &'a [u8], magic: &str, version: u32) -> Result<&'a [u8], String> {
    let newline = bytes.iter().position(|&b| b == b'\n').ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "the header is not text")?;
    let body = &bytes[newline + 1..];
    let unexpected = || format!("unexpected header {header:?}");
    let fields: Vec<&str> = header.split(' ').collect();
    let [found_magic, found_version, crc, len] = fields[..] else {
        return Err(unexpected());
    };
    if found_magic != magic {
        return Err(unexpected());
    }
    if found_version != version.to_string() {
        return Err(format!(
            "format version {found_version}, this ringpush reads {version}"
        ));
    }
    let crc = crc
        .strip_prefix("crc32=")
        .and_then(|c| u32::from_str_radix(c, 16).ok())
        .ok_or_else(unexpected)?;
    let len: usize = len
        .strip_prefix("bytes=")
        .and_then(|n| n.parse().ok())
        .ok_or_else(unexpected)?;
    if body.len() != len {
        return Err(format!("the header says {len} bytes follow, {} do", body.len()));
    }
    if crc32fast::hash(body) != crc {
        return Err("checksum mismatch".into());
    }
    Ok(body)
}

/// An I/O failure and the path it happened on.
#[derive(Debug)]
pub struct IoAt {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Replaces `path` (in directory `dir`) with `bytes`: temp file, fsync,
/// rename, directory fsync (the fsyncs only with `fsync`).
pub fn replace(dir: &Path, path: &Path, bytes: &[u8], fsync: bool) -> Result<(), IoAt> {
    let file_name = path.file_name().expect("a file path").to_string_lossy();
    let temp = dir.join(format!(".{file_name}.tmp"));
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IoAt { path, source }
    };
    let mut file = std::fs::File::create(&temp).map_err(at(&temp))?;
    file.write_all(bytes).map_err(at(&temp))?;
    if fsync {
        file.sync_all().map_err(at(&temp))?;
    }
    drop(file);
    std::fs::rename(&temp, path).map_err(at(path))?;
    if fsync {
        sync_dir(dir).map_err(at(dir))?;
    }
    Ok(())
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_framed_body_comes_back_and_damage_is_named() {
        let framed = frame("ringpush-x", 1, b"hello\nworld");
        assert_eq!(unframe(&framed, "ringpush-x", 1), Ok(&b"hello\nworld"[..]));
        assert!(unframe(&framed, "ringpush-y", 1)
            .unwrap_err()
            .contains("unexpected header"));
        assert!(unframe(&framed, "ringpush-x", 2)
            .unwrap_err()
            .contains("format version 1"));
        let mut flipped = framed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(
            unframe(&flipped, "ringpush-x", 1),
            Err("checksum mismatch".into())
        );
        let short = &framed[..framed.len() - 1];
        assert!(unframe(short, "ringpush-x", 1)
            .unwrap_err()
            .contains("bytes follow"));
    }
}
