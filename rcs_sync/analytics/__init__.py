"""What analysts read: the delivery/read report and its charts."""
