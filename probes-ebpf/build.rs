// Rebuild when the shared crate changes: its types are the map layouts.
fn main() {
    println!("cargo:rerun-if-changed=../probes-common/src");
}
