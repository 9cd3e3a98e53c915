//! One module per subcommand.

pub(crate) mod bench;
pub(crate) mod embed;
pub(crate) mod head;
pub(crate) mod health;
pub(crate) mod quantize;
pub(crate) mod serve;
