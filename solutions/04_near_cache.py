"""Notebook 04, "Build it yourself": an L1 that invalidations keep true (checker: "near_cache")."""


class MyNearCache:
    def __init__(self):
        self.values = {}
        self.versions = {}  # key -> how many invalidations of it arrived
        self.epoch = 0  # how many times the whole L1 was flushed

    def get(self, key):
        return self.values.get(key)

    def start_fill(self, key):
        return (self.epoch, self.versions.get(key, 0))

    def fill(self, key, value, ticket):
        if ticket == (self.epoch, self.versions.get(key, 0)):  # nothing happened since the read
            self.values[key] = value

    def on_invalidate(self, key):
        self.values.pop(key, None)
        self.versions[key] = self.versions.get(key, 0) + 1

    def on_disconnect(self):
        self.values.clear()
        self.epoch += 1

    on_subscribed = on_disconnect  # fills made while away may have missed invalidations
