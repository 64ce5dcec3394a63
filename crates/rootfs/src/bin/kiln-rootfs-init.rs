//! The container init as a stand-alone program, for this crate's tests and benchmarks.
//! kiln itself re-executes its own binary with a hidden subcommand that calls
//! `kiln_rootfs::init_main()` instead.

fn main() {
    kiln_rootfs::init_main()
}
