//! The sidecar image's link order (sidecar/link-order/): the scripts the image build runs,
//! on a small lld map and list. `make musl` (CI) runs them on the real build.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sidecar/link-order")
        .join(name)
}

fn awk(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("awk")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("awk runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("awk reads");
    child.wait_with_output().expect("awk ends")
}

const MAP: &str = "\
             VMA              LMA     Size Align Out     In      Symbol
             2b8              2b8    691f8     8 .rela.dyn
             2b8              2b8    691f8     8         <internal>:(.rela.dyn)
          2256c0           2256c0   4f993f    64 .text
          2256c0           2256c0       16     1         /x/rcrt1.o:(.text)
          2256c0           2256c0        0     1                 _start
          2256d6           2256d6      1da     1         /x/rcrt1.o:(.text._start_c)
          2256d6           2256d6      1da     1                 _start_c
          225981           225981       8c     1         /x/a.o:(.text._RNvMNtCs2Nb3gJ4iU0I_5alloc6stringNtB2_6String9from_utf8)
          225981           225981       8c     1                 <alloc::string::String>::from_utf8
          226130           226130       d0     1         /x/a.o:(.text.unlikely._ZN4core3fmt5write17h0123456789abcdefE)
          226130           226130       d0     1                 core::fmt::write::h0123456789abcdef
          226200           226200       20     1         /x/a.o:(.text._ZN5bytes3buf4head17h00000000000000aaE)
          226200           226200       20     1                 bytes::buf::head::h00000000000000aa
          226220           226220       20     1         /x/a.o:(.text.helper_without_symbol_line)
          72a000           72a000      100    16 .data
          72a000           72a000       10     8         /x/a.o:(.data.counter)
          72a000           72a000       10     8                 counter
";

#[test]
fn symbols_lists_function_sections_with_keys_that_outlive_the_build() {
    let output = awk(&["-f", script("symbols.awk").to_str().expect("path")], MAP);
    assert!(output.status.success(), "{output:?}");
    let lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        lines,
        [
            "2256d6\t1da\t_start_c\t_start_c",
            "225981\t8c\t_RNvMNtCs2Nb3gJ4iU0I_5alloc6stringNtB2_6String9from_utf8\t<alloc::string::String>::from_utf8",
            // The temperature prefix is not part of the symbol; the legacy hash is not part of the key.
            "226130\td0\t_ZN4core3fmt5write17h0123456789abcdefE\tcore::fmt::write",
            "226200\t20\t_ZN5bytes3buf4head17h00000000000000aaE\tbytes::buf::head",
        ],
        // Not listed: `_start` (a section of several functions), a section without a
        // symbol line, data.
    );
}

/// This build's functions, as symbols.awk prints them: `generic` has 3 instances, `fmt` 9.
fn this_build() -> String {
    let mut lines = vec!["1000\t10\texact_symbol\tmy::function".to_string()];
    for i in 0..3 {
        lines.push(format!(
            "{:x}\t10\tgeneric_{i}_new_hash\tmy::generic",
            0x2000 + i
        ));
    }
    for i in 0..9 {
        lines.push(format!(
            "{:x}\t10\tfmt_{i}\t<&T as core::fmt::Debug>::fmt",
            0x3000 + i
        ));
    }
    lines.join("\n") + "\n"
}

const LIST: &str = "\
# rounds
exact_symbol\tmy::function
generic_0_old_hash\tmy::generic
fmt_old\t<&T as core::fmt::Debug>::fmt
gone_symbol\tgone::function
exact_symbol\tmy::function
";

fn order(min_found: &str) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let symbols = dir.path().join("symbols.tsv");
    std::fs::write(&symbols, this_build()).expect("write");
    let list = dir.path().join("hot-functions.txt");
    std::fs::write(&list, LIST).expect("write");
    awk(
        &[
            "-v",
            &format!("min_found={min_found}"),
            "-f",
            script("order.awk").to_str().expect("path"),
            symbols.to_str().expect("path"),
            list.to_str().expect("path"),
        ],
        "",
    )
}

#[test]
fn order_places_exact_symbols_then_few_instances_by_key_once_each() {
    let output = order("0.5");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "exact_symbol\ngeneric_0_new_hash\ngeneric_1_new_hash\ngeneric_2_new_hash\n",
        "a key shared by 9 functions places none of them"
    );
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains("3 of 5 listed functions found (2 by symbol, 1 by name)"));
}

#[test]
fn order_fails_on_a_stale_list() {
    let output = order("0.8");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("stale"));
}
