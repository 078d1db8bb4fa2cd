//! Giving back the binary's pages that only start-up used.
//!
//! The sidecar idles in every opted-in pod. Most of its resident set was the binary's own
//! code and read-only data, touched once while starting (argument parsing, the Kubernetes
//! client's configuration, TLS and HTTP set-up, the metrics router) and never again; the
//! kernel's fault-around maps up to 64 KiB of neighbours with each page touched.
//! Those pages are clean and backed by the executable file: unmapping them loses nothing,
//! and one needed again is mapped again from the page cache on its first touch. Only
//! mappings with no anonymous (copied-on-write) page are released, so relocated data is
//! never thrown away.

use std::ops::Range;
use std::path::Path;

/// What one release gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    pub mappings: usize,
    /// Resident bytes of those mappings before the release.
    pub resident_bytes: u64,
}

/// Unmaps the resident pages of the executable's read-only, file-backed mappings.
pub fn release_start_up_pages() -> std::io::Result<Released> {
    let executable = std::fs::read_link("/proc/self/exe")?;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut released = Released::default();
    for mapping in releasable_mappings(&smaps, &executable) {
        let length = mapping.addresses.end - mapping.addresses.start;
        // SAFETY: the range is one whole mapping of the executable file, private, not
        // writable and holding no anonymous page (checked in `releasable_mappings`), so
        // MADV_DONTNEED only drops clean page-table entries: the next access maps the same
        // bytes again from the file. Nothing in this process holds a reference that the
        // call could invalidate.
        let result = unsafe {
            libc::madvise(
                mapping.addresses.start as *mut libc::c_void,
                length,
                libc::MADV_DONTNEED,
            )
        };
        if result != 0 {
            return Err(std::io::Error::last_os_error());
        }
        released.mappings += 1;
        released.resident_bytes += mapping.resident_kib * 1024;
    }
    Ok(released)
}

/// One mapping of `/proc/self/smaps` that may be released.
#[derive(Debug, PartialEq, Eq)]
pub struct Mapping {
    pub addresses: Range<usize>,
    pub resident_kib: u64,
}

/// The mappings of `executable` in an smaps listing that are private, not writable and
/// hold no anonymous page.
pub fn releasable_mappings(smaps: &str, executable: &Path) -> Vec<Mapping> {
    let mut found = Vec::new();
    // A mapping is released only once its `Anonymous:` field was read and is 0.
    let mut current: Option<(Mapping, Option<u64>)> = None;
    for line in smaps.lines() {
        if let Some(header) = MappingHeader::parse(line) {
            found.extend(finished(current.take()));
            current = header.is_candidate(executable).then_some((
                Mapping {
                    addresses: header.addresses,
                    resident_kib: 0,
                },
                None,
            ));
            continue;
        }
        let Some((mapping, anonymous_kib)) = current.as_mut() else {
            continue;
        };
        if let Some((name, value)) = line.split_once(':') {
            match name {
                "Rss" => mapping.resident_kib = kib(value).unwrap_or(0),
                "Anonymous" => *anonymous_kib = kib(value),
                _ => {}
            }
        }
    }
    found.extend(finished(current));
    found
}

fn finished(current: Option<(Mapping, Option<u64>)>) -> Option<Mapping> {
    current.and_then(|(mapping, anonymous_kib)| {
        (anonymous_kib == Some(0) && mapping.resident_kib > 0).then_some(mapping)
    })
}

/// `55d0c0a00000-55d0c0b00000 r-xp 00000000 fd:01 1234   /path/to/file`
struct MappingHeader<'a> {
    addresses: Range<usize>,
    permissions: &'a str,
    inode: &'a str,
    path: &'a str,
}

impl<'a> MappingHeader<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let addresses =
            usize::from_str_radix(start, 16).ok()?..usize::from_str_radix(end, 16).ok()?;
        let permissions = fields.next()?;
        if permissions.len() != 4 {
            return None;
        }
        let _offset = fields.next()?;
        let _device = fields.next()?;
        let inode = fields.next()?;
        // The path is the rest of the line (it may contain spaces).
        let path = line
            .splitn(6, char::is_whitespace)
            .nth(5)
            .map(str::trim)
            .unwrap_or("");
        Some(Self {
            addresses,
            permissions,
            inode,
            path,
        })
    }

    fn is_candidate(&self, executable: &Path) -> bool {
        let private_read_only = self.permissions.starts_with('r')
            && !self.permissions.contains('w')
            && self.permissions.ends_with('p');
        private_read_only
            && self.inode != "0"
            && !self.addresses.is_empty()
            && Path::new(self.path) == executable
    }
}

/// ` 408 kB` -> 408
fn kib(value: &str) -> Option<u64> {
    value.trim().strip_suffix("kB")?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXE: &str = "/usr/local/bin/pod-reloaded-sidecar";

    fn mapping(header: &str, rss: u64, anonymous: u64) -> String {
        format!(
            "{header}\nSize:               1024 kB\nRss:                {rss} kB\nPss:                {rss} kB\n\
             Anonymous:          {anonymous} kB\nSwap:                  0 kB\nVmFlags: rd ex mr mw me\n"
        )
    }

    #[test]
    fn releases_only_clean_read_only_mappings_of_the_executable() {
        let smaps = [
            mapping(
                &format!("00400000-00500000 r--p 00000000 fd:01 77 {EXE}"),
                300,
                0,
            ),
            mapping(
                &format!("00500000-00900000 r-xp 00100000 fd:01 77 {EXE}"),
                4000,
                0,
            ),
            // RELRO: read-only now, but relocated (copied on write) at start.
            mapping(
                &format!("00900000-00a00000 r--p 00500000 fd:01 77 {EXE}"),
                200,
                200,
            ),
            mapping(
                &format!("00a00000-00a10000 rw-p 00600000 fd:01 77 {EXE}"),
                64,
                64,
            ),
            mapping("00a10000-00b00000 rw-p 00000000 00:00 0 [heap]", 900, 900),
            mapping(
                "7f0000000000-7f0000100000 r-xp 00000000 fd:01 99 /usr/lib/libc.so.6",
                800,
                0,
            ),
            mapping(
                "7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0 [vdso]",
                8,
                0,
            ),
            mapping(
                &format!("00b00000-00b10000 r-xs 00000000 fd:01 77 {EXE}"),
                64,
                0,
            ),
            // Not resident: nothing to give back.
            mapping(
                &format!("00c00000-00d00000 r-xp 00700000 fd:01 77 {EXE}"),
                0,
                0,
            ),
        ]
        .concat();
        let released = releasable_mappings(&smaps, Path::new(EXE));
        assert_eq!(
            released,
            vec![
                Mapping {
                    addresses: 0x400000..0x500000,
                    resident_kib: 300
                },
                Mapping {
                    addresses: 0x500000..0x900000,
                    resident_kib: 4000
                },
            ]
        );
    }

    #[test]
    fn a_path_with_spaces_is_read_whole() {
        let exe = "/opt/my tools/sidecar";
        let smaps = mapping(
            &format!("00400000-00500000 r-xp 00000000 fd:01 77 {exe}"),
            12,
            0,
        );
        assert_eq!(releasable_mappings(&smaps, Path::new(exe)).len(), 1);
        assert!(releasable_mappings(&smaps, Path::new("/opt/my")).is_empty());
    }

    #[test]
    fn a_mapping_whose_anonymous_field_is_missing_or_unreadable_is_kept() {
        let header = format!("00400000-00500000 r-xp 00000000 fd:01 77 {EXE}");
        for fields in [
            "Rss: 12 kB\nAnonymous: lots\n",
            "Rss: 12 kB\nTHPeligible: 0\n",
        ] {
            let smaps = format!("{header}\n{fields}");
            assert!(
                releasable_mappings(&smaps, Path::new(EXE)).is_empty(),
                "{fields}"
            );
        }
    }

    #[test]
    fn releasing_keeps_the_process_running_and_lowers_its_resident_code() {
        // This test binary's own code: released, then run again (the asserts below).
        let released = release_start_up_pages().expect("madvise on our own mappings");
        assert!(released.mappings > 0, "{released:?}");
        assert!(released.resident_bytes > 0, "{released:?}");
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let after: u64 = releasable_mappings(&smaps, &exe)
            .iter()
            .map(|m| m.resident_kib * 1024)
            .sum();
        assert!(after < released.resident_bytes, "{after} >= {released:?}");
    }
}
