//! The image's build lays out the functions the sidecar's rounds run next to each other
//! (`sidecar/link-order/`): it sets `SIDECAR_SYMBOL_ORDER` to a symbol ordering file and
//! links with lld. Other builds are not affected.

fn main() {
    println!("cargo:rerun-if-env-changed=SIDECAR_SYMBOL_ORDER");
    let Some(order) = std::env::var_os("SIDECAR_SYMBOL_ORDER") else {
        return;
    };
    let order = std::path::PathBuf::from(order);
    // The file is written between two links of one build: a new order must relink.
    println!("cargo:rerun-if-changed={}", order.display());
    println!(
        "cargo:rustc-link-arg-bins=--symbol-ordering-file={}",
        order.display()
    );
    // Names of another build's functions that this one does not have are expected.
    println!("cargo:rustc-link-arg-bins=--no-warn-symbol-ordering");
    // The map names this build's symbols, which the order is made from.
    println!("cargo:rustc-link-arg-bins=-Map={}.map", order.display());
}
