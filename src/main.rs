//! The `garage-ipfs` binary: its own sockets get TCP_NODELAY (`net.rs`),
//! then the command line runs (`garage_ipfs::tools::cli::main`).

mod net;

fn main() -> std::process::ExitCode {
    // SIGPIPE stays ignored (a daemon must outlive a peer's reset); a
    // closed stdout ends the CLI quietly instead (`tools::util::write_stdout`).
    net::ensure_linked();
    garage_ipfs::tools::cli::main()
}
