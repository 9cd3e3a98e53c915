//! NemotronH-family models for marc: config, checkpoint loading and the forward pass.
