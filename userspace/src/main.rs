fn main() -> std::process::ExitCode {
    bpfnet::cli::main()
}
