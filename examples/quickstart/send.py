"""Send a few messages to the quick start's actors."""

from tasks import count_words, summarize

for text in ["the quick brown fox", "jumps over", "the lazy dog"]:
    message = count_words.send(text)
    print("sent", message.id)
summarize.send_with_options(args=("fox report", 9), priority=9)
print("sent 4 messages (3 to count_words, 1 to summarize); now run: taskmill worker tasks --burst")
