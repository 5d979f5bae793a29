//! The Model Context Protocol front door: vaults as MCP tools and
//! resources, for coding agents other than atems.
//!
//! - [`server`]: the MCP server behind `/mcp` (tools, resources,
//!   subscriptions). Its tools call [`crate::vaults`], the same operations
//!   as REST, so every rule holds on both transports.
//! - [`watch`]: one resource subscription, fed by the stream hub.
//! - [`owners`]: which credential opened each MCP session; `/mcp` lets
//!   only that one use it.
//! - [`render`]: the text renderings of tool results and resources.
//! - [`bridge`]: `vault-relay mcp`, a stdio server that forwards to a
//!   relay's `/mcp`, for agents that only start stdio servers.

pub mod bridge;
pub mod owners;
pub mod render;
pub mod server;
pub mod watch;

/// The header that names an MCP session on the Streamable HTTP transport.
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The header that carries the negotiated protocol revision.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";

/// The scheme of a vault's resource URI: `vault://<vault_id>`.
pub const VAULT_URI_PREFIX: &str = "vault://";

/// The resource URI of a vault.
pub fn vault_uri(vault_id: &str) -> String {
    format!("{VAULT_URI_PREFIX}{vault_id}")
}

/// The vault id a resource URI names, if it is a vault URI.
pub fn vault_id_of(uri: &str) -> Option<&str> {
    uri.strip_prefix(VAULT_URI_PREFIX)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_uris_round_trip_and_reject_others() {
        assert_eq!(vault_id_of(&vault_uri("v-abc123")), Some("v-abc123"));
        for bad in ["vault://", "file:///etc", "vault://v-1/x", "v-1"] {
            assert_eq!(vault_id_of(bad), None, "{bad}");
        }
    }
}
