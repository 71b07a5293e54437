//! Build information for `--version`: the git commit (see `bins/build-commit.rs`).

include!("../build-commit.rs");
