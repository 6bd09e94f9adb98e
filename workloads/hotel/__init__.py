"""The hotel saga: check the user, search hotels, reserve a room, book a seat, charge."""
