"""Notebook 06, "Build it yourself": a circuit breaker (checker: "breaker")."""


class MyBreaker:
    def __init__(self, failures, reset_after, clock):
        self.failures, self.reset_after, self.clock = failures, reset_after, clock
        self.state = "closed"
        self.count = 0  # consecutive failures
        self.opened_at = 0.0

    def allow(self):
        if self.state == "open" and self.clock() - self.opened_at >= self.reset_after:
            self.state = "half_open"
            return True  # the one probe
        return self.state == "closed"

    def success(self):
        self.state, self.count = "closed", 0

    def failure(self):
        self.count += 1
        if self.state == "half_open" or self.count >= self.failures:
            self.state, self.opened_at = "open", self.clock()
