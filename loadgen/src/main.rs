fn main() -> std::process::ExitCode {
    zpxe_loadgen::cli::main_with_args(std::env::args_os())
}
