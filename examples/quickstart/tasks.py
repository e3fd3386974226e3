"""The quick start: two actors on the embedded SQLite broker (no server, no configuration)."""

import taskmill


@taskmill.actor
def count_words(text: str) -> int:
    """Count the words in a text and log the count."""
    words = len(text.split())
    count_words.logger.info("counted %d words", words)
    return words


@taskmill.actor(queue="reports", priority=5, max_retries=2)
async def summarize(title: str, words: int) -> str:
    """An async actor: it runs on the worker's event loop."""
    summary = f"{title}: {words} words"
    summarize.logger.info(summary)
    return summary
