//! The `hyperfork` binary: the master serving the built-in app.

use std::process::ExitCode;

fn main() -> ExitCode {
    hyperfork::Server::from_env_and_args()
        .hyper_app(hyperfork::BuiltinApp::new)
        .run()
}
