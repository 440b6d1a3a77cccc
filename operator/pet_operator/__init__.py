"""The Pet operator: reconciles Pet and PetStore resources of ``petstore.example.com/v1``."""
