//! Dynamic batching, free of any transport: [`queue`] packs queued requests' sequences into token-budget batches.

pub(crate) mod queue;
