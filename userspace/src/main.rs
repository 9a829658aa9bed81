fn main() -> std::process::ExitCode {
    // A container runtime runs CNI plugins with CNI_COMMAND set: then this binary is one.
    if std::env::var_os("CNI_COMMAND").is_some() {
        return bpfnet::cni::main();
    }
    bpfnet::cli::main()
}
