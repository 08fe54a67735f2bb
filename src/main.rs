//! The `garage-ipfs` binary: its own sockets get TCP_NODELAY (`net.rs`),
//! then the command line runs (`garage_ipfs::tools::cli::main`).

mod net;

fn main() -> std::process::ExitCode {
    // Die quietly on a closed pipe (`garage-ipfs … | head`), as CLIs do.
    // SAFETY: restoring the default disposition of one signal at start-up.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    net::ensure_linked();
    garage_ipfs::tools::cli::main()
}
