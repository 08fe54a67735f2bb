//! The `garage-ipfs` binary: parse arguments, set up tracing, run.

use clap::Parser;

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`garage-ipfs … | head`), as CLIs do.
    // SAFETY: restoring the default disposition of one signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = garage_ipfs::cli::Cli::parse();
    garage_ipfs::cli::init_tracing(&cli);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
