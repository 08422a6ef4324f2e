//! The api role's broker connection, kept open in the background so that HTTP keeps serving
//! while RabbitMQ restarts. Events that cannot be published are left for dispatch's sweep.

use tidings_common::Result;
use tidings_common::amqp::{MESSAGE_POSTED, MessagePosted, SharedPublisher, Topology};

/// Publishes `message.posted` with a confirm. On failure the message stays undispatched in
/// the database and dispatch's sweep publishes it again.
pub async fn message_posted(
    publisher: &SharedPublisher,
    topology: &Topology,
    message_id: i64,
) -> Result<()> {
    publisher
        .get()?
        .publish_json_retrying(
            &topology.events_exchange(),
            MESSAGE_POSTED,
            &MessagePosted { message_id },
        )
        .await
}
