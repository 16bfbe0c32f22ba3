"""The HTTP engine: an asyncio client that packs nothing and knows no Beam. It sends prepared
requests concurrently under a rate limit, retries what may be retried, splits what one bad
instance refused, and turns every answer into predictions or dead-letter records."""
