//! The `marc` command line.
fn main() {}
