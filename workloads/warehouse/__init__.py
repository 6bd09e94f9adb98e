"""The warehouse saga: reserve stock, charge the customer, award loyalty points, ship."""
