//! The clap definitions of the `posgate` command line.
