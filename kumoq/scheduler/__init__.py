"""The scheduler: scheduled queues, their timer structures, retries and expiry."""
