fn main() -> std::process::ExitCode {
    // The OCI builder's container init re-executes this binary; it must take over
    // before anything else starts a thread (it enters namespaces with unshare).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "__rootfs-init")
    {
        kiln_rootfs::init_main()
    }
    kiln::cli::main()
}
